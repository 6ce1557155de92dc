//! The bridge between tensor artifacts (`cairn_formats::tensor`, Arrow IPC
//! files) and `tch::Tensor`.
//!
//! Loading allocates one contiguous CPU tensor and reads each record batch
//! of the file into it with one `pread` (not through the mapping, so the
//! pages read do not stay in the stage's resident memory); no element is
//! copied on its own. Saving writes a contiguous CPU view of the tensor straight
//! from libtorch's memory, in slices of rows, so a tensor is never held
//! twice: a tensor on a GPU comes back to the host, a strided one is made
//! contiguous and a converted one (`save_as`) converted, a slice at a time.

use std::path::Path;

use cairn_formats::tensor::{DType, TensorError, TensorFile, TensorWriter};
use tch::{Device, Kind, Tensor};

use crate::ctx::{StageError, StageResult};

/// The most bytes of rows copied, moved or converted at once when saving.
const SAVE_SLICE_BYTES: usize = 64 << 20;

impl From<TensorError> for StageError {
    fn from(e: TensorError) -> Self {
        StageError::new(e.to_string())
    }
}

/// The libtorch element type of a tensor artifact's dtype.
pub fn kind_of(dtype: DType) -> Kind {
    match dtype {
        DType::U8 => Kind::Uint8,
        DType::I32 => Kind::Int,
        DType::I64 => Kind::Int64,
        DType::F16 => Kind::Half,
        DType::F32 => Kind::Float,
        DType::F64 => Kind::Double,
    }
}

/// The artifact dtype that stores a libtorch element type, if any.
pub fn dtype_of(kind: Kind) -> StageResult<DType> {
    Ok(match kind {
        Kind::Uint8 => DType::U8,
        Kind::Int => DType::I32,
        Kind::Int64 => DType::I64,
        Kind::Half => DType::F16,
        Kind::Float => DType::F32,
        Kind::Double => DType::F64,
        other => {
            return Err(StageError::new(format!(
                "tensors of type {other:?} cannot be stored; convert to f32 (or u8/i64) first"
            )))
        }
    })
}

fn shape_i64(shape: &[usize]) -> Vec<i64> {
    shape.iter().map(|&d| d as i64).collect()
}

/// Loads a whole tensor artifact into a CPU tensor.
pub fn load(path: &Path) -> StageResult<Tensor> {
    load_file(&TensorFile::open(path)?)
}

/// Loads every row of an open tensor file into one CPU tensor.
pub fn load_file(file: &TensorFile) -> StageResult<Tensor> {
    load_rows(file, 0, file.rows())
}

/// Loads rows `first..first + count` of an open tensor file into a CPU
/// tensor of shape `[count, ...]` (for stages that work in slices).
pub fn load_rows(file: &TensorFile, first: usize, count: usize) -> StageResult<Tensor> {
    filled_rows(file, count, |dst| Ok(file.read_rows(first, dst)?))
}

/// Loads the rows `rows` names, each `(file, row)`, into one CPU tensor of
/// shape `[rows.len(), ...]`: one `pread` a row. Every file has `like`'s
/// dtype and row shape.
pub fn gather_rows(like: &TensorFile, rows: &[(&TensorFile, usize)]) -> StageResult<Tensor> {
    filled_rows(like, rows.len(), |dst| {
        for ((file, row), slot) in rows.iter().zip(dst.chunks_exact_mut(like.row_bytes())) {
            file.read_rows(*row, slot)?;
        }
        Ok(())
    })
}

/// A fresh contiguous CPU tensor of `count` rows of `file`'s dtype and row
/// shape, its bytes written by `fill` (not called for no rows).
fn filled_rows(file: &TensorFile, count: usize, fill: impl FnOnce(&mut [u8]) -> StageResult<()>) -> StageResult<Tensor> {
    let mut shape = file.shape().to_vec();
    shape[0] = count;
    let t = Tensor::f_empty(shape_i64(&shape), (kind_of(file.dtype()), Device::Cpu))?;
    let len = count * file.row_bytes();
    if len > 0 {
        // SAFETY: `t` is a freshly allocated, contiguous CPU tensor of
        // exactly `len` bytes, and nothing else refers to it yet.
        fill(unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut u8, len) })?;
    }
    Ok(t)
}

/// Appends a tensor's rows (its first axis) to an open writer. The tensor
/// must have the writer's dtype and row shape; it may live on any device.
pub fn write_rows(writer: &mut TensorWriter, t: &Tensor) -> StageResult<()> {
    write_rows_as(writer, t, t.kind(), SAVE_SLICE_BYTES)
}

/// [`write_rows`] for a tensor whose elements are converted to `kind`
/// (the writer's dtype) on the way, `slice_bytes` of rows at a time.
fn write_rows_as(writer: &mut TensorWriter, t: &Tensor, kind: Kind, slice_bytes: usize) -> StageResult<()> {
    let rows = t.size().first().copied().unwrap_or(0);
    let what = format!("tensor of shape {:?} ({:?})", t.size(), t.kind());
    write_slices(writer, rows, kind, slice_bytes, &what, |start, n| Ok(t.f_narrow(0, start, n)?))
}

/// Writes `rows` rows that `slice(start, count)` gives, converted to
/// `kind` (the writer's dtype), `slice_bytes` of the writer's rows at a
/// time (so one source's rows make the same file wherever they are held).
fn write_slices(
    writer: &mut TensorWriter,
    rows: i64,
    kind: Kind,
    slice_bytes: usize,
    what: &str,
    slice: impl Fn(i64, i64) -> StageResult<Tensor>,
) -> StageResult<()> {
    if rows == 0 {
        return Ok(());
    }
    let row_bytes = writer.row_bytes();
    let step = ((slice_bytes / row_bytes).max(1) as i64).min(rows);
    let mut start = 0;
    while start < rows {
        let n = step.min(rows - start);
        let slice = slice(start, n)?.f_to_kind(kind)?.f_to_device(Device::Cpu)?.f_contiguous()?;
        let len = n as usize * row_bytes;
        if slice.numel() * slice.kind().elt_size_in_bytes() != len {
            return Err(StageError::new(format!("{what} does not match the artifact's {row_bytes}-byte rows")));
        }
        // SAFETY: `slice` is a contiguous CPU tensor of exactly `len` bytes
        // and outlives this borrow.
        let bytes = unsafe { std::slice::from_raw_parts(slice.data_ptr() as *const u8, len) };
        writer.write_rows(bytes)?;
        start += n;
    }
    Ok(())
}

/// Saves a tensor (any device, rank >= 1) as a tensor artifact.
pub fn save(path: &Path, t: &Tensor) -> StageResult<()> {
    save_as(path, t, t.kind())
}

/// Saves a tensor with its elements converted to `kind` (e.g. f32
/// features stored as f16), never holding the converted tensor whole.
pub fn save_as(path: &Path, t: &Tensor, kind: Kind) -> StageResult<()> {
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let Some((_, inner)) = shape.split_first() else {
        return Err(StageError::new(format!("{}: cannot store a 0-dimensional tensor; reshape it to [1]", path.display())));
    };
    let mut writer = TensorWriter::create(path, dtype_of(kind)?, inner)?;
    write_rows_as(&mut writer, t, kind, SAVE_SLICE_BYTES)?;
    writer.finish()?;
    Ok(())
}

/// [`save_as`] for the rows of an open tensor file, read a slice at a
/// time: the same bytes as saving them from memory.
pub fn save_file_as(path: &Path, file: &TensorFile, kind: Kind) -> StageResult<()> {
    let mut writer = TensorWriter::create(path, dtype_of(kind)?, file.shape().get(1..).unwrap_or_default())?;
    let what = format!("{} ({:?})", file.path().display(), file.shape());
    write_slices(&mut writer, file.rows() as i64, kind, SAVE_SLICE_BYTES, &what, |start, n| load_rows(file, start as usize, n as usize))?;
    writer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_dtype_through_tch() {
        let dir = tempfile::tempdir().unwrap();
        for dtype in DType::ALL {
            let t = Tensor::arange(2 * 3 * 4, (Kind::Int64, Device::Cpu)).reshape([2, 3, 4]).to_kind(kind_of(dtype));
            let path = dir.path().join(format!("{dtype}.arrow"));
            save(&path, &t).unwrap();
            let back = load(&path).unwrap();
            assert_eq!(back.size(), vec![2, 3, 4]);
            assert_eq!(back.kind(), t.kind());
            assert!(back.equal(&t), "{dtype}");
        }
    }

    #[test]
    fn saves_non_contiguous_views_and_loads_row_slices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.arrow");
        let t = Tensor::arange(5 * 6, (Kind::Float, Device::Cpu)).reshape([6, 5]).transpose(0, 1);
        save(&path, &t).unwrap();
        let file = TensorFile::open(&path).unwrap();
        assert_eq!(file.shape(), &[5, 6]);
        assert!(load_rows(&file, 1, 3).unwrap().equal(&t.narrow(0, 1, 3)));
        assert!(load_rows(&file, 4, 2).is_err(), "rows past the end must fail");
    }

    #[test]
    fn converts_and_writes_a_strided_tensor_in_slices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.arrow");
        // Channels-last [7, 3, 2, 2] f32, as cached features are, stored as
        // f16 in slices of two rows (and a last one of one row).
        let t = (Tensor::arange(7 * 12, (Kind::Float, Device::Cpu)) * 0.1).reshape([7, 2, 2, 3]).permute([0, 3, 1, 2]);
        assert!(!t.is_contiguous());
        let mut writer = TensorWriter::create(&path, DType::F16, &[3, 2, 2]).unwrap();
        write_rows_as(&mut writer, &t, Kind::Half, 2 * 12 * 2 + 1).unwrap();
        writer.finish().unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.kind(), Kind::Half);
        assert!(back.equal(&t.to_kind(Kind::Half)), "slice-by-slice conversion must match converting the whole");
        save_as(&dir.path().join("w.arrow"), &t, Kind::Half).unwrap();
        assert!(load(&dir.path().join("w.arrow")).unwrap().equal(&back));
    }

    #[test]
    fn refuses_unstorable_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let err = save(&dir.path().join("b.arrow"), &Tensor::ones([2], (Kind::BFloat16, Device::Cpu))).unwrap_err();
        assert!(err.to_string().contains("convert to f32"), "{err}");
        assert!(save(&dir.path().join("s.arrow"), &Tensor::from(1.0f32)).is_err());
    }
}
