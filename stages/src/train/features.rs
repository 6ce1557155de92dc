//! Where a frozen prefix's cached features live: in memory (on a GPU,
//! where the tail reads them fastest, and for val sets), or on a CPU in a
//! tensor file in the stage's scratch directory, read a batch of rows at a
//! time. A file's pages are the kernel's to keep or drop: with memory to
//! spare they stay in the page cache and a batch is a copy from it; where
//! memory is short (a container's limit, a small CI runner) they are
//! written back and read again, where `pretrain` with its 1.15 GB of
//! features in memory thrashed (under a 1.2 GiB cgroup) or was killed
//! (under 700 MiB; BENCHMARKS.md). A file is used only where the scratch
//! disk holds it twice over ([`disk_holds`]): the features' artifact and
//! the stage's other outputs follow it onto that disk, and a full disk
//! would fail a stage that memory could have carried. The rows a batch gets
//! are the same bytes either way, so results do not depend on where the
//! features lived.

use std::path::{Path, PathBuf};

use cairn_formats::tensor::{DType, TensorFile, TensorWriter};
use tch::{Device, Kind, Tensor};

use crate::ctx::{StageError, StageResult};
use crate::device;
use crate::tensors;

/// Cached features, one row per image, and those of the mirrored images
/// when training flips.
pub(super) enum Features {
    Memory { plain: Tensor, flipped: Option<Tensor> },
    File { plain: FeatureFile, flipped: Option<FeatureFile> },
}

/// What one pass of the prefix made: features in memory or in a file.
pub(super) enum Held {
    Memory(Tensor),
    File(FeatureFile),
}

impl Features {
    /// The plain features and the mirrored ones. Where the mirrored pass
    /// could not write its file after the plain one had (the disk filled
    /// between them), the plain features are read into memory too, in the
    /// mirrored ones' layout.
    pub(super) fn new(plain: Held, flipped: Option<Held>) -> StageResult<Self> {
        match (plain, flipped) {
            (Held::Memory(plain), None) => Ok(Features::Memory { plain, flipped: None }),
            (Held::Memory(plain), Some(Held::Memory(f))) => Ok(Features::Memory { plain, flipped: Some(f) }),
            (Held::File(plain), None) => Ok(Features::File { plain, flipped: None }),
            (Held::File(plain), Some(Held::File(f))) => Ok(Features::File { plain, flipped: Some(f) }),
            (Held::File(plain), Some(Held::Memory(f))) => {
                let mut rows = f.empty_like();
                rows.copy_(&plain.load(0, plain.file.rows() as i64)?);
                Ok(Features::Memory { plain: rows, flipped: Some(f) })
            }
            (Held::Memory(_), Some(Held::File(_))) => Err(StageError::new("the mirrored features went to a file after the plain ones could not")),
        }
    }

    /// Rows `first..first + count` of the plain features and, when held,
    /// the mirrored ones, where they live (views in memory).
    pub(super) fn narrow(&self, first: i64, count: i64) -> StageResult<(Tensor, Option<Tensor>)> {
        match self {
            Features::Memory { plain, flipped } => Ok((plain.narrow(0, first, count), flipped.as_ref().map(|f| f.narrow(0, first, count)))),
            Features::File { plain, flipped } => {
                let load = |f: &FeatureFile| f.load(first, count);
                Ok((load(plain)?, flipped.as_ref().map(load).transpose()?))
            }
        }
    }

    /// Rows `idx` (a host tensor), each mirrored where `flips` says so
    /// (`mask` gives those flips as a mask for `where`), NCHW, on the
    /// device the features live on.
    pub(super) fn gather(&self, idx: &Tensor, flips: &[bool], mask: impl FnOnce(Device, usize) -> Tensor) -> StageResult<Tensor> {
        match self {
            Features::Memory { plain, flipped } => {
                let dev = plain.device();
                let rows = device::gather(plain, idx, dev);
                Ok(match flipped {
                    Some(f) if flips.iter().any(|&b| b) => device::gather(f, idx, dev).where_self(&mask(dev, rows.dim()), &rows),
                    _ => rows,
                })
            }
            Features::File { plain, flipped } => {
                let rows = Vec::<i64>::try_from(idx).map_err(|e| StageError::new(format!("batch indices: {e}")))?;
                read_rows(plain, flipped.as_ref(), &rows, flips)
            }
        }
    }

    /// Saves the plain features as a tensor artifact of `kind`: the bytes
    /// `tensors::save_as` writes for the same rows in memory.
    pub(super) fn save_plain_as(&self, path: &Path, kind: Kind) -> StageResult<()> {
        match self {
            Features::Memory { plain, .. } => tensors::save_as(path, plain, kind),
            Features::File { plain, .. } => tensors::save_file_as(path, &plain.file, kind),
        }
    }

    /// The plain features' shape.
    pub(super) fn size(&self) -> Vec<i64> {
        match self {
            Features::Memory { plain, .. } => plain.size(),
            Features::File { plain, .. } => plain.file.shape().iter().map(|&d| d as i64).collect(),
        }
    }
}

/// The bytes a file of `rows` features shaped and typed like `sample`'s
/// rows takes.
pub(super) fn file_bytes(sample: &Tensor, rows: i64) -> u64 {
    let row: i64 = sample.size().iter().skip(1).product();
    (rows.max(0) * row) as u64 * stored_dtype(sample.kind()).size() as u64
}

/// How features of `kind` are stored: as themselves, or as f32 where no
/// artifact stores that kind (bf16).
fn stored_dtype(kind: Kind) -> DType {
    tensors::dtype_of(kind).unwrap_or(DType::F32)
}

/// Whether the file system of `dir` has room for `need` bytes of features
/// twice over; `Err` says what it has. Where its free space cannot be
/// read, the file is tried (a failed write names the file and the disk).
pub(super) fn disk_holds(dir: &Path, need: u64) -> Result<(), String> {
    let Some(free) = free_bytes(dir) else { return Ok(()) };
    if free >= need.saturating_mul(2) {
        return Ok(());
    }
    let gb = |b: u64| b as f64 / 1e9;
    Err(format!("the scratch disk ({}) has {:.2} GB free, less than twice the {:.2} GB of features", dir.display(), gb(free), gb(need)))
}

/// The bytes an unprivileged process may still write on `dir`'s file system.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain old data that the call fills; `path` is a
    // NUL-terminated string that outlives the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statvfs(path.as_ptr(), &mut st) } == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// A tensor file of features and the kind they were made in. A kind no
/// artifact stores (bf16) is kept as f32, which holds each of its values
/// exactly, and converted back when read.
pub(super) struct FeatureFile {
    file: TensorFile,
    kind: Kind,
}

impl FeatureFile {
    /// Rows `first..first + count`, in the kind they were made in.
    pub(super) fn load(&self, first: i64, count: i64) -> StageResult<Tensor> {
        Ok(tensors::load_rows(&self.file, first as usize, count as usize)?.to_kind(self.kind))
    }
}

/// Rows `rows` of `plain`, each from `flipped` instead where `flips` says
/// so, into one contiguous CPU tensor: one `pread` a row.
fn read_rows(plain: &FeatureFile, flipped: Option<&FeatureFile>, rows: &[i64], flips: &[bool]) -> StageResult<Tensor> {
    let mut picked = Vec::with_capacity(rows.len());
    for (i, &row) in rows.iter().enumerate() {
        let from = match flipped {
            Some(f) if flips.get(i).copied().unwrap_or(false) => f,
            _ => plain,
        };
        let row = usize::try_from(row).map_err(|_| StageError::new(format!("negative row index {row}")))?;
        picked.push((&from.file, row));
    }
    Ok(tensors::gather_rows(&plain.file, &picked)?.to_kind(plain.kind))
}

/// Collects a prefix's features batch by batch into a tensor file at
/// `path`, then opens it.
pub(super) struct FeatureWriter {
    path: PathBuf,
    /// The writer, the kind the rows come in and the kind stored.
    writer: Option<(TensorWriter, Kind, Kind)>,
}

impl FeatureWriter {
    pub(super) fn new(path: PathBuf) -> Self {
        Self { path, writer: None }
    }

    /// Appends the rows of `batch` (any layout; written NCHW).
    pub(super) fn push(&mut self, batch: &Tensor) -> StageResult<()> {
        if self.writer.is_none() {
            let inner: Vec<usize> = batch.size()[1..].iter().map(|&d| d as usize).collect();
            let stored = stored_dtype(batch.kind());
            self.writer = Some((TensorWriter::create(&self.path, stored, &inner)?, batch.kind(), tensors::kind_of(stored)));
        }
        let (writer, _, stored) = self.writer.as_mut().expect("made above");
        tensors::write_rows(writer, &batch.to_kind(*stored))
    }

    /// The file, or `None` when no rows came.
    pub(super) fn finish(self) -> StageResult<Option<FeatureFile>> {
        let Some((writer, kind, _)) = self.writer else { return Ok(None) };
        writer.finish()?;
        Ok(Some(FeatureFile { file: TensorFile::open(&self.path)?, kind }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same rows, flips and saved bytes whether the features are in
    /// memory or in a file.
    #[test]
    fn a_file_gives_the_rows_and_bytes_memory_gives() {
        let dir = tempfile::tempdir().unwrap();
        let plain = crate::models::channels_last(&Tensor::randn([10, 3, 2, 2], (Kind::Float, Device::Cpu)));
        let flipped = plain.flip([3]);
        let to_file = |t: &Tensor, name: &str| {
            let mut f = FeatureWriter::new(dir.path().join(name));
            for s in [0, 4, 8] {
                f.push(&t.narrow(0, s, 4.min(10 - s))).unwrap();
            }
            f.finish().unwrap().unwrap()
        };
        let file = Features::File { plain: to_file(&plain, "p.arrow"), flipped: Some(to_file(&flipped, "f.arrow")) };
        let memory = Features::Memory { plain: plain.shallow_clone(), flipped: Some(flipped.shallow_clone()) };
        let idx = Tensor::from_slice(&[7i64, 0, 3, 3, 9]);
        let flips = [true, false, true, false, false];
        let mask = |dev: Device, dims: usize| {
            let shape = [-1i64, 1, 1, 1];
            Tensor::from_slice(&flips.map(|b| b as u8)).to_kind(Kind::Bool).to_device(dev).view(&shape[..dims])
        };
        let from_memory = memory.gather(&idx, &flips, mask).unwrap();
        let from_file = file.gather(&idx, &flips, mask).unwrap();
        assert!(from_file.equal(&from_memory.contiguous()));
        let (p, f) = file.narrow(2, 5).unwrap();
        assert!(p.equal(&plain.narrow(0, 2, 5).contiguous()) && f.unwrap().equal(&flipped.narrow(0, 2, 5).contiguous()));
        assert_eq!(file.size(), memory.size());
        memory.save_plain_as(&dir.path().join("m.arrow"), Kind::Half).unwrap();
        file.save_plain_as(&dir.path().join("f16.arrow"), Kind::Half).unwrap();
        assert_eq!(std::fs::read(dir.path().join("m.arrow")).unwrap(), std::fs::read(dir.path().join("f16.arrow")).unwrap());
    }

    /// Plain features in a file and mirrored ones in memory (the mirrored
    /// file could not be written) become both in memory: the file's rows,
    /// in the mirrored ones' layout.
    #[test]
    fn plain_features_in_a_file_join_mirrored_ones_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let plain = crate::models::channels_last(&Tensor::randn([5, 3, 2, 2], (Kind::Float, Device::Cpu)));
        let mut f = FeatureWriter::new(dir.path().join("p.arrow"));
        f.push(&plain).unwrap();
        let flipped = plain.flip([3]);
        let both = Features::new(Held::File(f.finish().unwrap().unwrap()), Some(Held::Memory(flipped.shallow_clone()))).unwrap();
        let Features::Memory { plain: got, flipped: Some(f) } = both else { panic!("not in memory") };
        assert!(got.equal(&plain) && got.stride() == flipped.stride() && f.equal(&flipped));
    }

    /// A file's size comes from the rows' shape and stored type; a disk
    /// must hold it twice over.
    #[test]
    fn a_features_file_is_sized_and_checked_against_the_disk() {
        let sample = Tensor::zeros([0, 8, 4, 4], (Kind::BFloat16, Device::Cpu));
        assert_eq!(file_bytes(&sample, 10), 10 * 8 * 16 * 4, "bf16 is stored as f32");
        assert_eq!(file_bytes(&sample.to_kind(Kind::Half), 10), 10 * 8 * 16 * 2);
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).expect("a temporary directory's disk reports its free space");
        assert!(disk_holds(dir.path(), free / 2).is_ok());
        let short = disk_holds(dir.path(), free / 2 + (1 << 30)).unwrap_err();
        assert!(short.contains("GB free, less than twice the") && short.contains(&dir.path().display().to_string()), "{short}");
    }

    /// bf16 features, which no artifact stores, come back as the same bf16
    /// values, and save as the bytes the memory path saves.
    #[test]
    fn bf16_features_come_back_as_they_went() {
        let dir = tempfile::tempdir().unwrap();
        let plain = Tensor::randn([6, 2, 3, 3], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        let mut f = FeatureWriter::new(dir.path().join("p.arrow"));
        f.push(&plain).unwrap();
        let file = Features::File { plain: f.finish().unwrap().unwrap(), flipped: None };
        let got = file.gather(&Tensor::from_slice(&[5i64, 1]), &[], |_, _| unreachable!()).unwrap();
        assert_eq!(got.kind(), Kind::BFloat16);
        assert!(got.equal(&plain.index_select(0, &Tensor::from_slice(&[5i64, 1]))));
        assert!(file.narrow(0, 6).unwrap().0.equal(&plain));
        let memory = Features::Memory { plain, flipped: None };
        memory.save_plain_as(&dir.path().join("m.arrow"), Kind::Half).unwrap();
        file.save_plain_as(&dir.path().join("f.arrow"), Kind::Half).unwrap();
        assert_eq!(std::fs::read(dir.path().join("m.arrow")).unwrap(), std::fs::read(dir.path().join("f.arrow")).unwrap());
    }
}
