//! The header of a safetensors file (Hugging Face's format, the one
//! PyTorch, transformers and cairn's model outputs use): an 8-byte
//! little-endian length, then a JSON object giving each tensor's dtype,
//! shape and byte range in the data section that follows, and string
//! metadata under `__metadata__`. Parsed and checked here without
//! libtorch, every size against the file's, before anything is allocated
//! for the data: the engine shows a model file from its header alone
//! (`cairn inspect`), and the worker builds its tensors from the ranges
//! checked here (`stages/src/weights.rs`).

use std::collections::BTreeMap;
use std::io::Read;
use std::ops::Range;
use std::path::Path;

use serde_json::{Map, Value};

/// Header sizes beyond this are rejected: real headers are kilobytes.
pub const MAX_HEADER: u64 = 100 << 20;

/// Why a file is not a valid safetensors file (a message naming the entry).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HeaderError(pub String);

/// One tensor: its dtype as the format spells it (`F32`, `BF16`, ...), its
/// shape, and where its bytes lie in the data section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub dtype: String,
    pub shape: Vec<u64>,
    pub range: Range<usize>,
}

impl Entry {
    /// The number of values (1 for a scalar).
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// A checked header.
#[derive(Clone, Debug, Default)]
pub struct Header {
    pub tensors: BTreeMap<String, Entry>,
    pub metadata: BTreeMap<String, String>,
    /// Where the data section starts in the file (8 + the header's length).
    pub data_start: usize,
}

/// The dtypes cairn reads, as the format spells them, with the bytes a
/// value takes.
pub const DTYPES: [(&str, u64); 10] =
    [("F64", 8), ("I64", 8), ("F32", 4), ("I32", 4), ("F16", 2), ("BF16", 2), ("I16", 2), ("I8", 1), ("U8", 1), ("BOOL", 1)];

/// Bytes a value of `dtype` takes, for the [`DTYPES`] cairn reads; `None`
/// for the others.
pub fn dtype_size(dtype: &str) -> Option<u64> {
    DTYPES.iter().find(|(name, _)| *name == dtype).map(|&(_, size)| size)
}

/// The header of a whole file's bytes.
pub fn parse(bytes: &[u8]) -> Result<Header, HeaderError> {
    let n = header_len(bytes, bytes.len() as u64)?;
    parse_header(&bytes[8..8 + n], (bytes.len() - 8 - n) as u64)
}

/// The header of the file at `path`, reading only the header's bytes.
pub fn read_header(path: &Path) -> Result<Header, HeaderError> {
    let io = |e: std::io::Error| HeaderError(format!("{}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut prefix = Vec::with_capacity(8);
    (&mut file).take(8).read_to_end(&mut prefix).map_err(io)?;
    let n = header_len(&prefix, file_len)?;
    let mut head = vec![0u8; n];
    file.read_exact(&mut head).map_err(io)?;
    parse_header(&head, file_len - 8 - n as u64)
}

/// The header's length from the file's first bytes, checked against the
/// file's length `file_len`.
fn header_len(prefix: &[u8], file_len: u64) -> Result<usize, HeaderError> {
    let bytes: [u8; 8] = prefix.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| HeaderError("shorter than its 8-byte header length".into()))?;
    let n = u64::from_le_bytes(bytes);
    if n > MAX_HEADER || n > file_len.saturating_sub(8) {
        return Err(HeaderError(format!("declares a {n}-byte header but the file has {file_len} bytes")));
    }
    Ok(n as usize)
}

/// Parses the header's JSON, checking every entry against a data section
/// of `data_len` bytes.
fn parse_header(head: &[u8], data_len: u64) -> Result<Header, HeaderError> {
    let bad = |m: String| HeaderError(m);
    let json: Map<String, Value> = serde_json::from_slice(head).map_err(|e| bad(format!("header is not a JSON object: {e}")))?;
    let mut header = Header { data_start: 8 + head.len(), ..Header::default() };
    for (name, entry) in json {
        if name == "__metadata__" {
            for (k, v) in entry.as_object().into_iter().flatten() {
                header.metadata.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
            }
            continue;
        }
        let entry = parse_entry(&name, &entry, data_len)?;
        header.tensors.insert(name, entry);
    }
    Ok(header)
}

/// One tensor's entry, its bytes inside the data section and exactly as
/// many as its dtype and shape need.
fn parse_entry(name: &str, entry: &Value, data_len: u64) -> Result<Entry, HeaderError> {
    let bad = |m: String| HeaderError(m);
    let field = |f: &str| entry.get(f).ok_or_else(|| bad(format!("`{name}` has no `{f}`")));
    let dtype = field("dtype")?.as_str().unwrap_or_default();
    let size = dtype_size(dtype).ok_or_else(|| bad(format!("`{name}` has unsupported dtype `{dtype}`")))?;
    let ints = |v: &Value| -> Option<Vec<u64>> { v.as_array()?.iter().map(|x| x.as_u64()).collect() };
    let shape = ints(field("shape")?).ok_or_else(|| bad(format!("`{name}`: shape is not a list of sizes")))?;
    let offs = ints(field("data_offsets")?).filter(|o| o.len() == 2).ok_or_else(|| bad(format!("`{name}`: bad data_offsets")))?;
    let numel = shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d).filter(|_| d <= i64::MAX as u64))
        .ok_or_else(|| bad(format!("`{name}`: shape overflows")))?;
    let len = numel.checked_mul(size);
    if offs[0] > offs[1] || offs[1] > data_len || Some(offs[1] - offs[0]) != len {
        return Err(bad(format!(
            "`{name}`: {dtype} {shape:?} needs {} bytes but data_offsets {offs:?} span {} of a {data_len}-byte data section",
            len.map_or("too many".into(), |l| l.to_string()),
            offs[1].saturating_sub(offs[0]),
        )));
    }
    Ok(Entry { dtype: dtype.to_string(), shape, range: offs[0] as usize..offs[1] as usize })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(head: &str, data: usize) -> Vec<u8> {
        let mut f = (head.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(head.as_bytes());
        f.extend(std::iter::repeat_n(0u8, data));
        f
    }

    #[test]
    fn reads_entries_and_metadata_from_the_whole_file_or_its_header() {
        let bytes = file(r#"{"__metadata__":{"cairn.model":"{}"},"b":{"dtype":"BF16","shape":[2,3],"data_offsets":[4,16]},"a":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}"#, 16);
        let h = parse(&bytes).unwrap();
        assert_eq!(h.metadata["cairn.model"], "{}");
        assert_eq!(h.tensors["b"], Entry { dtype: "BF16".into(), shape: vec![2, 3], range: 4..16 });
        assert_eq!((h.tensors["a"].numel(), h.tensors["b"].numel()), (1, 6));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let from_file = read_header(&path).unwrap();
        assert_eq!((from_file.tensors, from_file.data_start), (h.tensors, h.data_start));
    }

    #[test]
    fn rejects_lying_headers() {
        let mut huge = (u64::MAX - 3).to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(parse(&huge).unwrap_err().0.contains("header"));
        assert!(parse(&[1, 2, 3]).unwrap_err().0.contains("8-byte"));
        let e = parse(&file(r#"{"x":{"dtype":"F32","shape":[1000000000,1000],"data_offsets":[0,8]}}"#, 8)).unwrap_err().0;
        assert!(e.contains("`x`") && e.contains("needs"), "{e}");
        let e = parse(&file(r#"{"x":{"dtype":"F32","shape":[0,18446744073709551615],"data_offsets":[0,0]}}"#, 0)).unwrap_err().0;
        assert!(e.contains("overflows"), "{e}");
        let e = parse(&file(r#"{"x":{"dtype":"U64","shape":[1],"data_offsets":[0,8]}}"#, 8)).unwrap_err().0;
        assert!(e.contains("unsupported dtype `U64`"), "{e}");
    }
}
