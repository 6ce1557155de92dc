//! Tensor artifacts: an N-dimensional array stored as an Arrow IPC *file*
//! with one column `data` of Arrow's canonical `arrow.fixed_shape_tensor`
//! extension type, one row per sample (the tensor's first axis).
//!
//! Using the canonical extension type means pyarrow, polars and friends read
//! a cairn tensor without knowing cairn. The element shape lives in the
//! extension metadata (`{"shape":[3,32,32]}`); a 1-D tensor stores element
//! shape `[1]`, so the full shape is also kept in the schema metadata under
//! `cairn:shape`, which makes `[N]` and `[N,1]` round-trip exactly. Rows are
//! written in record batches of about [`BATCH_BYTES`], so a writer never
//! holds the whole tensor, and batch boundaries depend only on the element
//! shape and dtype, so equal tensors give byte-equal files (and cache keys).
//!
//! The reader maps the file and decodes the IPC footer and record-batch
//! headers itself (with arrow-ipc's verified flatbuffer accessors) rather
//! than through arrow-ipc's `FileDecoder`, which panics on buffer offsets
//! that point outside the file. Every offset and length a file declares is
//! checked against the real file size before use, and each batch's values
//! are exposed as a zero-copy byte slice of the mapping.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, FixedSizeListArray, RecordBatch};
use arrow_buffer::MutableBuffer;
use arrow_data::ArrayData;
use arrow_ipc::writer::{FileWriter, IpcWriteOptions};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use memmap2::Mmap;

/// Name of the canonical Arrow extension type for fixed-shape tensors.
pub const EXTENSION_NAME: &str = "arrow.fixed_shape_tensor";
/// Schema metadata key holding the tensor's full shape as a JSON array.
pub const SHAPE_KEY: &str = "cairn:shape";
/// The one column of a tensor file.
pub const COLUMN: &str = "data";
/// Target size of one record batch. Big enough that per-batch overhead is
/// negligible, small enough that a writer's buffer stays modest.
pub const BATCH_BYTES: usize = 8 << 20;

const EXT_NAME_KEY: &str = "ARROW:extension:name";
const EXT_META_KEY: &str = "ARROW:extension:metadata";
const MAGIC: &[u8; 6] = b"ARROW1";
/// Leading magic (padded to 8) plus trailing footer length and magic.
const MIN_FILE_LEN: usize = 8 + 4 + 6;

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    U8,
    I32,
    I64,
    F16,
    F32,
    F64,
}

impl DType {
    pub const ALL: [DType; 6] = [DType::U8, DType::I32, DType::I64, DType::F16, DType::F32, DType::F64];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::U8 => 1,
            DType::F16 => 2,
            DType::I32 | DType::F32 => 4,
            DType::I64 | DType::F64 => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::U8 => "u8",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::F16 => "f16",
            DType::F32 => "f32",
            DType::F64 => "f64",
        }
    }

    fn arrow(self) -> DataType {
        match self {
            DType::U8 => DataType::UInt8,
            DType::I32 => DataType::Int32,
            DType::I64 => DataType::Int64,
            DType::F16 => DataType::Float16,
            DType::F32 => DataType::Float32,
            DType::F64 => DataType::Float64,
        }
    }

    fn from_arrow(dt: &DataType) -> Option<Self> {
        DType::ALL.into_iter().find(|d| &d.arrow() == dt)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a tensor file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a valid cairn tensor file: {reason} (re-create it by re-running the stage that wrote it)")]
    Malformed { path: PathBuf, reason: String },
    #[error("{path}: cannot write tensor: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: Arrow encoding failed: {source}")]
    Arrow { path: PathBuf, source: ArrowError },
}

type Result<T, E = TensorError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TensorError + '_ {
    move |source| TensorError::Io { path: path.to_path_buf(), source }
}

fn arrow_err(path: &Path) -> impl FnOnce(ArrowError) -> TensorError + '_ {
    move |source| TensorError::Arrow { path: path.to_path_buf(), source }
}

/// Bytes in one row (one sample) of a tensor with this element shape, or
/// `None` on overflow.
fn row_bytes_of(dtype: DType, inner: &[usize]) -> Option<usize> {
    inner.iter().try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
}

/// The `cairn:shape` value for `rows` rows, padded with trailing spaces
/// (valid JSON whitespace) to the width of the largest possible row count.
/// The writer stores it with `rows = 0` before it knows the count and
/// patches it in place at `finish`, which keeps the file layout unchanged.
fn shape_meta(rows: u64, inner: &[usize]) -> String {
    let render = |n: u64| {
        let dims: Vec<String> = std::iter::once(n.to_string()).chain(inner.iter().map(|d| d.to_string())).collect();
        format!("[{}]", dims.join(","))
    };
    let width = render(u64::MAX).len();
    format!("{:<width$}", render(rows))
}

/// Streams rows into a tensor file. Rows are buffered only up to one record
/// batch. Call [`TensorWriter::finish`]; a writer dropped without it leaves
/// an incomplete file, which readers reject.
pub struct TensorWriter {
    path: PathBuf,
    dtype: DType,
    inner: Vec<usize>,
    row_bytes: usize,
    batch_rows: usize,
    schema: SchemaRef,
    pending: MutableBuffer,
    rows: u64,
    /// Bytes before the first record batch: where the schema message lives.
    header_len: u64,
    writer: FileWriter<BufWriter<File>>,
}

impl TensorWriter {
    /// Creates `path` for a tensor of element type `dtype` whose rows have
    /// shape `inner_shape` (the full shape minus its first axis; empty for a
    /// 1-D tensor).
    pub fn create(path: &Path, dtype: DType, inner_shape: &[usize]) -> Result<Self> {
        let invalid = |reason: String| TensorError::Invalid { path: path.to_path_buf(), reason };
        if inner_shape.contains(&0) {
            return Err(invalid(format!("element shape {inner_shape:?} has a zero-sized axis")));
        }
        let row_bytes = row_bytes_of(dtype, inner_shape)
            .ok_or_else(|| invalid(format!("element shape {inner_shape:?} overflows")))?;
        let list_size = i32::try_from(row_bytes / dtype.size())
            .map_err(|_| invalid(format!("element shape {inner_shape:?} has more than 2^31 elements per row")))?;
        let elem_shape: Vec<usize> = if inner_shape.is_empty() { vec![1] } else { inner_shape.to_vec() };
        let ext_meta = serde_json::json!({ "shape": elem_shape }).to_string();

        let item = Arc::new(Field::new("item", dtype.arrow(), false));
        let column = Field::new(COLUMN, DataType::FixedSizeList(item, list_size), false).with_metadata(
            [(EXT_NAME_KEY.to_string(), EXTENSION_NAME.to_string()), (EXT_META_KEY.to_string(), ext_meta)],
        );
        let schema = Arc::new(Schema::new(vec![column]).with_metadata(
            [(SHAPE_KEY.to_string(), shape_meta(0, inner_shape))],
        ));

        // Readable too: `finish` reads the header and footer back to patch them.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(io_err(path))?;
        let mut writer = FileWriter::try_new_with_options(BufWriter::new(file), &schema, IpcWriteOptions::default())
            .map_err(arrow_err(path))?;
        let header_len = writer.get_mut().stream_position().map_err(io_err(path))?;
        let batch_rows = (BATCH_BYTES / row_bytes).max(1);
        Ok(Self {
            path: path.to_path_buf(),
            dtype,
            inner: inner_shape.to_vec(),
            row_bytes,
            batch_rows,
            schema,
            pending: MutableBuffer::with_capacity(batch_rows * row_bytes),
            rows: 0,
            header_len,
            writer,
        })
    }

    /// Bytes in one row.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Appends whole rows, given as native-endian element bytes.
    pub fn write_rows(&mut self, mut bytes: &[u8]) -> Result<()> {
        if !bytes.len().is_multiple_of(self.row_bytes) {
            return Err(TensorError::Invalid {
                path: self.path.clone(),
                reason: format!(
                    "{} bytes is not a whole number of rows ({} bytes each, {} {:?})",
                    bytes.len(),
                    self.row_bytes,
                    self.dtype,
                    self.inner
                ),
            });
        }
        let batch_bytes = self.batch_rows * self.row_bytes;
        while !bytes.is_empty() {
            let take = (batch_bytes - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.pending.len() == batch_bytes {
                self.flush_batch()?;
            }
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<()> {
        let rows = self.pending.len() / self.row_bytes;
        let values_len = self.pending.len() / self.dtype.size();
        let buffer = std::mem::replace(&mut self.pending, MutableBuffer::with_capacity(self.batch_rows * self.row_bytes));
        let arrow = arrow_err(&self.path);
        let values = ArrayData::builder(self.dtype.arrow())
            .len(values_len)
            .add_buffer(buffer.into())
            .build()
            .map_err(arrow)?;
        let list_type = self.schema.field(0).data_type().clone();
        let list = ArrayData::builder(list_type).len(rows).add_child_data(values).build().map_err(arrow_err(&self.path))?;
        let column: ArrayRef = Arc::new(FixedSizeListArray::from(list));
        let batch = RecordBatch::try_new(self.schema.clone(), vec![column]).map_err(arrow_err(&self.path))?;
        self.writer.write(&batch).map_err(arrow_err(&self.path))?;
        self.rows += rows as u64;
        Ok(())
    }

    /// Writes the last batch and the footer, then records the row count in
    /// `cairn:shape`. Returns the full shape.
    pub fn finish(mut self) -> Result<Vec<usize>> {
        if !self.pending.is_empty() {
            self.flush_batch()?;
        }
        self.writer.finish().map_err(arrow_err(&self.path))?;
        let buffered = self.writer.into_inner().map_err(arrow_err(&self.path))?;
        let mut file = buffered.into_inner().map_err(|e| TensorError::Io { path: self.path.clone(), source: e.into_error() })?;

        // The schema (with the placeholder) is stored twice: in the header
        // and in the footer. Patch both, searching only those regions.
        let placeholder = shape_meta(0, &self.inner);
        let actual = shape_meta(self.rows, &self.inner);
        let len = file.seek(SeekFrom::End(0)).map_err(io_err(&self.path))?;
        let mut trailer = [0u8; 10];
        read_at(&mut file, len - 10, &mut trailer).map_err(io_err(&self.path))?;
        let footer_len = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]) as u64;
        for (start, end) in [(0, self.header_len), (len.saturating_sub(10 + footer_len), len - 10)] {
            let mut region = vec![0u8; (end - start) as usize];
            read_at(&mut file, start, &mut region).map_err(io_err(&self.path))?;
            let at = find(&region, placeholder.as_bytes()).ok_or_else(|| TensorError::Invalid {
                path: self.path.clone(),
                reason: "internal error: shape metadata placeholder not found".into(),
            })?;
            file.seek(SeekFrom::Start(start + at as u64)).map_err(io_err(&self.path))?;
            file.write_all(actual.as_bytes()).map_err(io_err(&self.path))?;
        }
        file.flush().map_err(io_err(&self.path))?;
        let mut shape = vec![self.rows as usize];
        shape.extend_from_slice(&self.inner);
        Ok(shape)
    }
}

fn read_at(file: &mut File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Writes a whole tensor held in memory.
pub fn write_tensor(path: &Path, dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<()> {
    let invalid = |reason: String| TensorError::Invalid { path: path.to_path_buf(), reason };
    let (&rows, inner) = shape.split_first().ok_or_else(|| invalid("a tensor needs at least one axis".into()))?;
    let expected = row_bytes_of(dtype, inner)
        .and_then(|r| r.checked_mul(rows))
        .ok_or_else(|| invalid(format!("shape {shape:?} overflows")))?;
    if bytes.len() != expected {
        return Err(invalid(format!(
            "shape {shape:?} of {dtype} needs {expected} bytes, got {}",
            bytes.len()
        )));
    }
    let mut writer = TensorWriter::create(path, dtype, inner)?;
    writer.write_rows(bytes)?;
    writer.finish()?;
    Ok(())
}

/// One record batch of a tensor file: a run of whole rows.
struct Chunk {
    first_row: usize,
    rows: usize,
    /// Byte range of the values inside the mapping.
    start: usize,
    len: usize,
}

/// A tensor file mapped into memory. Opening validates the whole layout;
/// the element bytes are then borrowed straight from the mapping
/// ([`TensorFile::chunks`]) or copied out of the file ([`TensorFile::read_rows`],
/// which reads rather than maps them, so a reader that copies a large
/// tensor slice by slice does not also hold every page it read).
///
/// The mapping assumes the file is not modified while open, which holds for
/// cache artifacts (they are read-only and replaced, never rewritten).
pub struct TensorFile {
    path: PathBuf,
    dtype: DType,
    shape: Vec<usize>,
    row_bytes: usize,
    chunks: Vec<Chunk>,
    map: Mmap,
    file: File,
}

impl std::fmt::Debug for TensorFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorFile")
            .field("path", &self.path)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("batches", &self.chunks.len())
            .finish()
    }
}

impl TensorFile {
    pub fn open(path: &Path) -> Result<Self> {
        let malformed = |reason: String| TensorError::Malformed { path: path.to_path_buf(), reason };
        let file = File::open(path).map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len() as usize;
        if len < MIN_FILE_LEN {
            return Err(malformed(format!("the file is {len} bytes, too short for an Arrow IPC file")));
        }
        // SAFETY: the mapping is read-only and cairn never rewrites a file
        // in place (see the type's docs).
        let map = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
        if &map[..6] != MAGIC {
            return Err(malformed("it does not start with the Arrow IPC magic `ARROW1`".into()));
        }
        if &map[len - 6..] != MAGIC {
            return Err(malformed("it does not end with the Arrow IPC magic `ARROW1` (truncated?)".into()));
        }
        let footer_len = i32::from_le_bytes(map[len - 10..len - 6].try_into().expect("4 bytes"));
        let footer_len = usize::try_from(footer_len)
            .ok()
            .filter(|&n| n <= len - MIN_FILE_LEN)
            .ok_or_else(|| malformed(format!("footer length {footer_len} does not fit in a {len}-byte file")))?;
        let footer = arrow_ipc::root_as_footer(&map[len - 10 - footer_len..len - 10])
            .map_err(|e| malformed(format!("unreadable footer: {e}")))?;
        let fb_schema = footer.schema().ok_or_else(|| malformed("the footer has no schema".into()))?;
        let schema = arrow_ipc::convert::try_fb_to_schema(fb_schema)
            .map_err(|e| malformed(format!("unreadable schema: {e}")))?;
        let (dtype, inner) = check_schema(&schema).map_err(malformed)?;
        let row_bytes = row_bytes_of(dtype, &inner).ok_or_else(|| malformed(format!("element shape {inner:?} overflows")))?;

        let mut chunks = Vec::new();
        let mut total_rows = 0usize;
        for (i, block) in footer.recordBatches().iter().flatten().enumerate() {
            let chunk = read_block(&map, block, total_rows, row_bytes, dtype)
                .map_err(|reason| malformed(format!("record batch {i}: {reason}")))?;
            total_rows += chunk.rows;
            if chunk.rows > 0 {
                chunks.push(chunk);
            }
        }
        let mut shape = vec![total_rows];
        shape.extend_from_slice(&inner);
        if let Some(declared) = schema.metadata().get(SHAPE_KEY) {
            let declared: Vec<usize> = serde_json::from_str(declared)
                .map_err(|e| malformed(format!("`{SHAPE_KEY}` metadata {declared:?} is not a shape: {e}")))?;
            if declared != shape {
                return Err(malformed(format!(
                    "`{SHAPE_KEY}` says shape {declared:?} but the data holds {shape:?}"
                )));
            }
        }
        Ok(Self { path: path.to_path_buf(), dtype, shape, row_bytes, chunks, map, file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The full shape; the first axis is the row count.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn rows(&self) -> usize {
        self.shape[0]
    }

    /// Bytes in one row.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// Bytes in the whole tensor.
    pub fn byte_len(&self) -> usize {
        self.rows() * self.row_bytes
    }

    /// The tensor's bytes, one slice per record batch, in row order. Each
    /// slice holds whole rows and borrows the mapping (no copy).
    pub fn chunks(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.chunks.iter().map(|c| &self.map[c.start..c.start + c.len])
    }

    /// Copies rows `first..first + out.len() / row_bytes` into `out`, across
    /// batch boundaries. `out` must hold whole rows that exist.
    pub fn read_rows(&self, first: usize, out: &mut [u8]) -> Result<()> {
        let count = out.len() / self.row_bytes;
        if !out.len().is_multiple_of(self.row_bytes) || first.checked_add(count).is_none_or(|end| end > self.rows()) {
            return Err(TensorError::Invalid {
                path: self.path.clone(),
                reason: format!(
                    "rows {first}..{} ({} bytes) are not whole rows of this {}-row tensor",
                    first.saturating_add(count),
                    out.len(),
                    self.rows()
                ),
            });
        }
        let mut row = first;
        let mut filled = 0;
        // Chunks are sorted by first_row; find the one holding `first`.
        let start = self.chunks.partition_point(|c| c.first_row + c.rows <= first);
        for c in &self.chunks[start..] {
            if filled == out.len() {
                break;
            }
            let skip = (row - c.first_row) * self.row_bytes;
            let n = (c.len - skip).min(out.len() - filled);
            self.file.read_exact_at(&mut out[filled..filled + n], (c.start + skip) as u64).map_err(io_err(&self.path))?;
            filled += n;
            row += n / self.row_bytes;
        }
        Ok(())
    }

    /// Copies the whole tensor into one vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.byte_len());
        for chunk in self.chunks() {
            out.extend_from_slice(chunk);
        }
        out
    }
}

/// Checks the schema is one non-null `data` column of fixed-shape tensors
/// and returns the element type and the row shape (empty for 1-D tensors).
fn check_schema(schema: &Schema) -> std::result::Result<(DType, Vec<usize>), String> {
    let [field] = &schema.fields()[..] else {
        return Err(format!("expected one column `{COLUMN}`, found {}", schema.fields().len()));
    };
    if field.name() != COLUMN {
        return Err(format!("expected one column `{COLUMN}`, found `{}`", field.name()));
    }
    if field.extension_type_name() != Some(EXTENSION_NAME) {
        return Err(format!("column `{COLUMN}` is not of extension type `{EXTENSION_NAME}`"));
    }
    let DataType::FixedSizeList(item, list_size) = field.data_type() else {
        return Err(format!("column `{COLUMN}` has type {}, expected a fixed-size list", field.data_type()));
    };
    let dtype = DType::from_arrow(item.data_type())
        .ok_or_else(|| format!("element type {} is not supported (u8, i32, i64, f16, f32, f64)", item.data_type()))?;
    let meta = field.extension_type_metadata().ok_or_else(|| format!("`{EXT_META_KEY}` is missing"))?;
    #[derive(serde::Deserialize)]
    struct ExtMeta {
        shape: Vec<usize>,
    }
    let elem: ExtMeta =
        serde_json::from_str(meta).map_err(|e| format!("`{EXT_META_KEY}` {meta:?} has no valid shape: {e}"))?;
    let elems = elem.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if elems != usize::try_from(*list_size).ok() || *list_size <= 0 {
        return Err(format!("element shape {:?} does not match the list size {list_size}", elem.shape));
    }
    // `cairn:shape` tells a 1-D tensor (stored with element shape [1]) from
    // an N×1 one; foreign files without it read as N×shape.
    let inner = match schema.metadata().get(SHAPE_KEY).map(|s| serde_json::from_str::<Vec<usize>>(s)) {
        Some(Ok(full)) if full.len() == 1 && elem.shape == [1] => Vec::new(),
        _ => elem.shape,
    };
    Ok((dtype, inner))
}

/// Validates one record batch block and locates its values.
fn read_block(
    map: &[u8],
    block: &arrow_ipc::Block,
    first_row: usize,
    row_bytes: usize,
    dtype: DType,
) -> std::result::Result<Chunk, String> {
    let len = map.len();
    let offset = usize::try_from(block.offset()).map_err(|_| format!("negative offset {}", block.offset()))?;
    let meta_len = usize::try_from(block.metaDataLength()).map_err(|_| "negative metadata length".to_string())?;
    let body_len = usize::try_from(block.bodyLength()).map_err(|_| "negative body length".to_string())?;
    let body_start = offset.checked_add(meta_len).filter(|&s| s <= len).ok_or("metadata runs past the end of the file")?;
    body_start
        .checked_add(body_len)
        .filter(|&e| e <= len)
        .ok_or_else(|| format!("body of {body_len} bytes at {body_start} runs past the end of the {len}-byte file"))?;

    // Message framing: optional 0xFFFFFFFF continuation, then a 4-byte size.
    let meta = &map[offset..body_start];
    let (size_at, header) = match meta {
        [0xff, 0xff, 0xff, 0xff, rest @ ..] => (4, rest),
        _ => (0, meta),
    };
    let size_bytes: [u8; 4] = header.get(..4).and_then(|b| b.try_into().ok()).ok_or("truncated message header")?;
    let size = i32::from_le_bytes(size_bytes);
    let size = usize::try_from(size).ok().filter(|&s| size_at + 4 + s <= meta_len).ok_or("bad message size")?;
    let message = arrow_ipc::root_as_message(&header[4..4 + size]).map_err(|e| format!("unreadable message: {e}"))?;
    let batch = message.header_as_record_batch().ok_or("not a record batch message")?;
    if batch.compression().is_some() {
        return Err("compressed batches are not supported".into());
    }
    let rows = usize::try_from(batch.length()).map_err(|_| "negative row count".to_string())?;
    let nodes = batch.nodes().ok_or("no field nodes")?;
    let buffers = batch.buffers().ok_or("no buffers")?;
    // A fixed-size list of primitives: nodes [list, values]; buffers
    // [list validity, values validity, values].
    if nodes.len() != 2 || buffers.len() != 3 {
        return Err(format!("expected 2 nodes and 3 buffers, found {} and {}", nodes.len(), buffers.len()));
    }
    if nodes.iter().any(|n| n.null_count() != 0) {
        return Err("tensor rows must not contain nulls".into());
    }
    let list_len = usize::try_from(nodes.get(0).length()).map_err(|_| "negative list length".to_string())?;
    if list_len != rows {
        return Err(format!("list length {list_len} differs from the batch's {rows} rows"));
    }
    let byte_len = rows.checked_mul(row_bytes).ok_or("row count overflows")?;
    let values = buffers.get(2);
    let v_off = usize::try_from(values.offset()).map_err(|_| "negative buffer offset".to_string())?;
    let v_len = usize::try_from(values.length()).map_err(|_| "negative buffer length".to_string())?;
    if v_len < byte_len || v_off.checked_add(byte_len).is_none_or(|e| e > body_len) {
        return Err(format!(
            "values buffer ({v_len} bytes at {v_off}) does not hold {rows} rows of {row_bytes} bytes inside the {body_len}-byte body"
        ));
    }
    let values_node_len = usize::try_from(nodes.get(1).length()).ok();
    if values_node_len != Some(byte_len / dtype.size()) {
        return Err(format!("values length {values_node_len:?} differs from {rows} rows of {row_bytes} bytes"));
    }
    Ok(Chunk { first_row, rows, start: body_start + v_off, len: byte_len })
}

#[cfg(test)]
#[path = "tensor_tests.rs"]
mod tests;
