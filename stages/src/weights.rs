//! Model weights as safetensors (the format PyTorch, transformers and
//! friends load directly), plus loading of initial weights from either
//! safetensors or PyTorch `.pth` checkpoints (see [`crate::pth`]).
//!
//! Names are the VarStore's, which follow torchvision, so a saved ResNet
//! loads into `torchvision.models.resnet50(num_classes=K)` with
//! `strict=False` (only `num_batches_tracked` is absent). Files are written
//! deterministically — names sorted, header built from a sorted map — so
//! equal weights give byte-equal files and equal cache entries. The reader
//! takes the header as [`cairn_formats::safetensors`] checked it (every
//! declared offset and size against the file) before it allocates
//! anything.

use std::collections::BTreeMap;
use std::path::Path;

use cairn_formats::safetensors;
use serde_json::{json, Map, Value};
use tch::{nn, Kind, Tensor};

use crate::ctx::{StageError, StageResult};

fn dtype_name(k: Kind) -> StageResult<&'static str> {
    Ok(match k {
        Kind::Float => "F32",
        Kind::Double => "F64",
        Kind::Half => "F16",
        Kind::BFloat16 => "BF16",
        Kind::Int64 => "I64",
        Kind::Int => "I32",
        Kind::Int16 => "I16",
        Kind::Int8 => "I8",
        Kind::Uint8 => "U8",
        Kind::Bool => "BOOL",
        other => return Err(StageError::new(format!("cannot store {other:?} tensors in safetensors"))),
    })
}

fn kind_of(name: &str) -> Option<Kind> {
    Some(match name {
        "F32" => Kind::Float,
        "F64" => Kind::Double,
        "F16" => Kind::Half,
        "BF16" => Kind::BFloat16,
        "I64" => Kind::Int64,
        "I32" => Kind::Int,
        "I16" => Kind::Int16,
        "I8" => Kind::Int8,
        "U8" => Kind::Uint8,
        "BOOL" => Kind::Bool,
        _ => return None,
    })
}

/// Writes named tensors (moved to CPU, made contiguous) with string
/// metadata under `__metadata__`.
pub fn save(path: &Path, tensors: &BTreeMap<String, Tensor>, metadata: &BTreeMap<String, String>) -> StageResult {
    let mut header = Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), json!(metadata));
    }
    let mut data = Vec::new();
    for (name, t) in tensors {
        let t = t.to_device(tch::Device::Cpu).contiguous();
        let bytes = t.numel() * t.kind().elt_size_in_bytes();
        let start = data.len();
        data.resize(start + bytes, 0);
        t.f_copy_data_u8(&mut data[start..], t.numel())?;
        header.insert(name.clone(), json!({"dtype": dtype_name(t.kind())?, "shape": t.size(), "data_offsets": [start, start + bytes]}));
    }
    let mut head = serde_json::to_vec(&Value::Object(header)).map_err(|e| StageError::new(e.to_string()))?;
    // The format asks for the data to start 8-byte aligned.
    while head.len() % 8 != 0 {
        head.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + head.len() + data.len());
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&data);
    std::fs::write(path, out).map_err(|e| StageError::new(format!("{}: {e}", path.display())))
}

/// The VarStore's variables (torchvision names) as a sorted map.
pub fn state_dict(vs: &nn::VarStore) -> BTreeMap<String, Tensor> {
    vs.variables().into_iter().collect()
}

/// Saved weights: tensors by name and the header's metadata.
#[derive(Debug)]
pub struct Weights {
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: BTreeMap<String, String>,
}

/// Reads a safetensors file.
pub fn read_safetensors(path: &Path) -> StageResult<Weights> {
    let bytes = std::fs::read(path).map_err(|e| StageError::new(format!("{}: {e}", path.display())))?;
    parse_safetensors(&bytes).map_err(|e| StageError::new(format!("{}: not a valid safetensors file: {}", path.display(), e.0)))
}

/// Parses safetensors bytes: the header checked by
/// [`cairn_formats::safetensors`], each tensor copied from its range.
pub fn parse_safetensors(bytes: &[u8]) -> StageResult<Weights> {
    let header = safetensors::parse(bytes).map_err(|e| StageError::new(e.0))?;
    let data = &bytes[header.data_start..];
    let mut tensors = BTreeMap::new();
    for (name, e) in header.tensors {
        let kind = kind_of(&e.dtype).ok_or_else(|| StageError::new(format!("`{name}` has unsupported dtype `{}`", e.dtype)))?;
        let shape: Vec<i64> = e.shape.iter().map(|&d| d as i64).collect();
        tensors.insert(name, Tensor::f_from_data_size(&data[e.range], &shape, kind)?);
    }
    Ok(Weights { tensors, metadata: header.metadata })
}

/// Reads initial weights from a safetensors file or a PyTorch zip
/// checkpoint (which has no metadata), told apart by their first bytes
/// rather than the extension.
pub fn read_any(path: &Path) -> StageResult<Weights> {
    let mut magic = [0u8; 4];
    let n = std::io::Read::read(&mut std::fs::File::open(path).map_err(|e| StageError::new(format!("{}: {e}", path.display())))?, &mut magic)?;
    // A zip (torch.save since 1.6), or the start of the legacy format's
    // magic-number pickle; as a safetensors header length the latter would
    // exceed `safetensors::MAX_HEADER`.
    if n == 4 && (&magic == b"PK\x03\x04" || magic == [0x80, 0x02, 0x8a, 0x0a]) {
        Ok(Weights { tensors: crate::pth::read(path)?, metadata: BTreeMap::new() })
    } else {
        read_safetensors(path)
    }
}

/// Copies `src` into the VarStore's variables of the same names. Variables
/// for which `skip` holds keep their values; every other variable must be
/// present with the same shape. Extra entries (`num_batches_tracked`, a
/// checkpoint's other heads) are ignored. Returns how many were copied.
pub fn load_into(vs: &nn::VarStore, src: &BTreeMap<String, Tensor>, skip: impl Fn(&str) -> bool) -> StageResult<usize> {
    let mut missing = Vec::new();
    let mut copied = 0;
    let mut vars: Vec<_> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, mut var) in vars {
        if skip(&name) {
            continue;
        }
        match src.get(&name) {
            None => missing.push(name),
            Some(t) if t.size() != var.size() => {
                return Err(StageError::new(format!(
                    "initial weights: `{name}` has shape {:?}, the model needs {:?} (a different architecture, stem or class count? set reinit_head = true to skip the head)",
                    t.size(),
                    var.size()
                )))
            }
            Some(t) => {
                tch::no_grad(|| var.f_copy_(&t.to_kind(var.kind()).to_device(var.device())))?;
                copied += 1;
            }
        }
    }
    if !missing.is_empty() {
        let shown: Vec<_> = missing.iter().take(5).map(String::as_str).collect();
        return Err(StageError::new(format!(
            "initial weights lack {} of the model's variables, e.g. {} (expected torchvision-style names)",
            missing.len(),
            shown.join(", ")
        )));
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_bytes_and_metadata() {
        let tmp = tempdir();
        let dir = tmp.path();
        let mut m = BTreeMap::new();
        m.insert("b.weight".to_string(), Tensor::from_slice(&[1.5f32, -2.0, 3.25, 4.0]).view([2, 2]));
        m.insert("a.running_mean".to_string(), Tensor::from_slice(&[7i64, 8]));
        let meta = BTreeMap::from([("cairn.model".to_string(), "{}".to_string())]);
        let p = dir.join("w.safetensors");
        save(&p, &m, &meta).unwrap();
        let first = std::fs::read(&p).unwrap();
        save(&p, &m, &meta).unwrap();
        assert_eq!(first, std::fs::read(&p).unwrap(), "saving is deterministic");
        let w = read_safetensors(&p).unwrap();
        assert_eq!(w.metadata, meta);
        assert!(w.tensors["b.weight"].equal(&m["b.weight"]));
        assert_eq!(w.tensors["a.running_mean"].kind(), Kind::Int64);
    }

    #[test]
    fn every_dtype_the_header_accepts_is_a_kind_of_its_size() {
        for (name, size) in safetensors::DTYPES {
            let kind = kind_of(name).unwrap_or_else(|| panic!("{name} has no kind"));
            assert_eq!(kind.elt_size_in_bytes() as u64, size, "{name}");
            assert_eq!(dtype_name(kind).unwrap(), name);
        }
    }

    #[test]
    fn rejects_lying_headers_without_allocating() {
        let mut huge = (u64::MAX - 3).to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(parse_safetensors(&huge).unwrap_err().0.contains("header"));
        let head = br#"{"x":{"dtype":"F32","shape":[1000000000,1000],"data_offsets":[0,8]}}"#;
        let mut f = (head.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(head);
        f.extend_from_slice(&[0; 8]);
        let e = parse_safetensors(&f).unwrap_err().0;
        assert!(e.contains("`x`") && e.contains("needs"), "{e}");
        assert!(parse_safetensors(&[1, 2, 3]).is_err());
    }

    #[test]
    fn load_into_checks_names_and_shapes() {
        let _rng = crate::rng_guard();
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let _l = nn::linear(vs.root() / "fc", 3, 2, Default::default());
        let mut src = BTreeMap::new();
        src.insert("fc.weight".to_string(), Tensor::ones([2, 3], (Kind::Float, tch::Device::Cpu)));
        assert!(load_into(&vs, &src, |_| false).unwrap_err().0.contains("fc.bias"));
        assert_eq!(load_into(&vs, &src, |n| n == "fc.bias").unwrap(), 1);
        src.insert("fc.bias".to_string(), Tensor::ones([5], (Kind::Float, tch::Device::Cpu)));
        assert!(load_into(&vs, &src, |_| false).unwrap_err().0.contains("shape"));
    }

    /// A scratch directory, removed when the test ends.
    pub(crate) fn tempdir() -> tempfile::TempDir {
        tempfile::Builder::new().prefix("cairn-weights-").tempdir().unwrap()
    }
}
