//! Where a frozen prefix's cached features live: in memory (on a GPU,
//! where the tail reads them fastest, and for val sets), or on a CPU in a
//! tensor file in the stage's scratch directory, read a batch of rows at a
//! time. A file's pages are the kernel's to keep or drop: with memory to
//! spare they stay in the page cache and a batch is a copy from it; where
//! memory is short (a container's limit, a small CI runner) they are
//! written back and read again rather than the stage thrashing or being
//! killed, as `pretrain`'s 1.15 GB of features held in memory were under a
//! 700 MiB cgroup (BENCHMARKS.md). The rows a batch gets are the same bytes
//! either way, so results do not depend on where the features lived.

use std::path::{Path, PathBuf};

use cairn_formats::tensor::{TensorFile, TensorWriter};
use tch::{Device, Kind, Tensor};

use crate::ctx::{StageError, StageResult};
use crate::device;
use crate::tensors;

/// Cached features, one row per image, and those of the mirrored images
/// when training flips.
pub(super) enum Features {
    Memory { plain: Tensor, flipped: Option<Tensor> },
    File { plain: TensorFile, flipped: Option<TensorFile> },
}

impl Features {
    /// Rows `first..first + count` of the plain features and, when held,
    /// the mirrored ones, where they live (views in memory).
    pub(super) fn narrow(&self, first: i64, count: i64) -> StageResult<(Tensor, Option<Tensor>)> {
        match self {
            Features::Memory { plain, flipped } => Ok((plain.narrow(0, first, count), flipped.as_ref().map(|f| f.narrow(0, first, count)))),
            Features::File { plain, flipped } => {
                let load = |f: &TensorFile| tensors::load_rows(f, first as usize, count as usize);
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
            Features::File { plain, .. } => tensors::save_file_as(path, plain, kind),
        }
    }

    /// The plain features' shape.
    pub(super) fn size(&self) -> Vec<i64> {
        match self {
            Features::Memory { plain, .. } => plain.size(),
            Features::File { plain, .. } => plain.shape().iter().map(|&d| d as i64).collect(),
        }
    }
}

/// What one pass of the prefix made: features in memory or in a file.
pub(super) enum Held {
    Memory(Tensor),
    File(TensorFile),
}

impl Features {
    /// The plain features and the mirrored ones, from passes told the
    /// same place to keep them.
    pub(super) fn new(plain: Held, flipped: Option<Held>) -> StageResult<Self> {
        match (plain, flipped) {
            (Held::Memory(plain), None) => Ok(Features::Memory { plain, flipped: None }),
            (Held::Memory(plain), Some(Held::Memory(f))) => Ok(Features::Memory { plain, flipped: Some(f) }),
            (Held::File(plain), None) => Ok(Features::File { plain, flipped: None }),
            (Held::File(plain), Some(Held::File(f))) => Ok(Features::File { plain, flipped: Some(f) }),
            _ => Err(StageError::new("the plain and mirrored features were kept in different places")),
        }
    }
}

/// Rows `rows` of `plain`, each from `flipped` instead where `flips` says
/// so, into one contiguous CPU tensor: one `pread` a row.
fn read_rows(plain: &TensorFile, flipped: Option<&TensorFile>, rows: &[i64], flips: &[bool]) -> StageResult<Tensor> {
    let mut shape: Vec<i64> = plain.shape().iter().map(|&d| d as i64).collect();
    shape[0] = rows.len() as i64;
    let out = Tensor::f_empty(shape.as_slice(), (tensors::kind_of(plain.dtype()), Device::Cpu))?;
    let row_bytes = plain.row_bytes();
    if rows.is_empty() || row_bytes == 0 {
        return Ok(out);
    }
    // SAFETY: `out` is a freshly allocated, contiguous CPU tensor of
    // exactly `rows.len() * row_bytes` bytes, and nothing else refers to it yet.
    let dst = unsafe { std::slice::from_raw_parts_mut(out.data_ptr() as *mut u8, rows.len() * row_bytes) };
    for (i, (&row, slot)) in rows.iter().zip(dst.chunks_exact_mut(row_bytes)).enumerate() {
        let from = match flipped {
            Some(f) if flips.get(i).copied().unwrap_or(false) => f,
            _ => plain,
        };
        let row = usize::try_from(row).map_err(|_| StageError::new(format!("negative row index {row}")))?;
        from.read_rows(row, slot)?;
    }
    Ok(out)
}

/// Collects a prefix's features batch by batch into a tensor file at
/// `path`, then opens it.
pub(super) struct RowFile {
    path: PathBuf,
    writer: Option<TensorWriter>,
}

impl RowFile {
    pub(super) fn new(path: PathBuf) -> Self {
        Self { path, writer: None }
    }

    /// Appends the rows of `batch` (any layout; written NCHW).
    pub(super) fn push(&mut self, batch: &Tensor) -> StageResult<()> {
        if self.writer.is_none() {
            let inner: Vec<usize> = batch.size()[1..].iter().map(|&d| d as usize).collect();
            self.writer = Some(TensorWriter::create(&self.path, tensors::dtype_of(batch.kind())?, &inner)?);
        }
        tensors::write_rows(self.writer.as_mut().expect("made above"), batch)
    }

    /// The file, or `None` when no rows came.
    pub(super) fn finish(self) -> StageResult<Option<TensorFile>> {
        let Some(writer) = self.writer else { return Ok(None) };
        writer.finish()?;
        Ok(Some(TensorFile::open(&self.path)?))
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
            let mut f = RowFile::new(dir.path().join(name));
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
}
