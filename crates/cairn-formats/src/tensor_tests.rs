//! Tests for tensor artifacts: round trips for every dtype and shape kind,
//! streaming vs whole writes, hostile files, and pyarrow interoperability.

use super::*;

/// A deterministic byte pattern that differs between neighbouring rows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31) ^ (i >> 7)) as u8).collect()
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[test]
fn round_trips_every_dtype() {
    let dir = tmp();
    for dtype in DType::ALL {
        let shape = [5, 2, 3];
        let bytes = pattern(5 * 2 * 3 * dtype.size());
        let path = dir.path().join(format!("{dtype}.arrow"));
        write_tensor(&path, dtype, &shape, &bytes).unwrap();
        let t = TensorFile::open(&path).unwrap();
        assert_eq!(t.dtype(), dtype);
        assert_eq!(t.shape(), &shape);
        assert_eq!(t.to_vec(), bytes, "{dtype}");
    }
}

#[test]
fn one_dimensional_and_n_by_one_stay_distinct() {
    let dir = tmp();
    let bytes = pattern(7 * 8);
    for shape in [&[7][..], &[7, 1][..]] {
        let path = dir.path().join(format!("{}.arrow", shape.len()));
        write_tensor(&path, DType::I64, shape, &bytes).unwrap();
        let t = TensorFile::open(&path).unwrap();
        assert_eq!(t.shape(), shape);
        assert_eq!(t.to_vec(), bytes);
    }
}

#[test]
fn empty_tensor_round_trips() {
    let dir = tmp();
    let path = dir.path().join("empty.arrow");
    write_tensor(&path, DType::F32, &[0, 3, 2, 2], &[]).unwrap();
    let t = TensorFile::open(&path).unwrap();
    assert_eq!(t.shape(), &[0, 3, 2, 2]);
    assert_eq!(t.chunks().count(), 0);
}

#[test]
fn streaming_in_any_chunking_gives_the_same_file() {
    let dir = tmp();
    // 786,432-byte rows: 10 rows per batch, so 25 rows span three batches.
    let inner = [3, 512, 512];
    let row = 3 * 512 * 512;
    let bytes = pattern(25 * row);
    let whole = dir.path().join("whole.arrow");
    write_tensor(&whole, DType::U8, &[25, 3, 512, 512], &bytes).unwrap();

    let streamed = dir.path().join("streamed.arrow");
    let mut w = TensorWriter::create(&streamed, DType::U8, &inner).unwrap();
    for piece in bytes.chunks(7 * row) {
        w.write_rows(piece).unwrap();
    }
    assert_eq!(w.finish().unwrap(), vec![25, 3, 512, 512]);
    assert_eq!(std::fs::read(&whole).unwrap(), std::fs::read(&streamed).unwrap());

    let t = TensorFile::open(&streamed).unwrap();
    assert_eq!(t.chunks().count(), 3);
    // Rows 8..13 straddle the first batch boundary (at row 10).
    let mut out = vec![0u8; 5 * row];
    t.read_rows(8, &mut out).unwrap();
    assert_eq!(out, &bytes[8 * row..13 * row]);
    assert!(t.read_rows(24, &mut out).is_err(), "reading past the end must fail");
    assert!(t.read_rows(0, &mut out[..row - 1]).is_err(), "partial rows must fail");
}

#[test]
fn rejects_partial_rows_and_bad_shapes() {
    let dir = tmp();
    let path = dir.path().join("t.arrow");
    let mut w = TensorWriter::create(&path, DType::F32, &[3]).unwrap();
    let err = w.write_rows(&[0u8; 13]).unwrap_err().to_string();
    assert!(err.contains("not a whole number of rows"), "{err}");
    assert!(TensorWriter::create(&path, DType::U8, &[3, 0]).is_err());
    let err = write_tensor(&path, DType::U8, &[2, 3], &[0u8; 5]).unwrap_err().to_string();
    assert!(err.contains("needs 6 bytes, got 5"), "{err}");
}

#[test]
fn truncated_or_corrupted_files_are_errors_not_panics() {
    let dir = tmp();
    let good = dir.path().join("good.arrow");
    write_tensor(&good, DType::I32, &[4, 3], &pattern(48)).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let bad = dir.path().join("bad.arrow");

    for cut in 0..bytes.len() {
        std::fs::write(&bad, &bytes[..cut]).unwrap();
        let err = TensorFile::open(&bad).expect_err("a truncated file must not open");
        assert!(err.to_string().contains("bad.arrow"), "{err}");
    }
    // Flipping any single byte must never panic; most flips are detected.
    let mut detected = 0;
    for at in 0..bytes.len() {
        let mut corrupt = bytes.clone();
        corrupt[at] ^= 0xa5;
        std::fs::write(&bad, &corrupt).unwrap();
        if TensorFile::open(&bad).is_err() {
            detected += 1;
        }
    }
    assert!(detected > bytes.len() / 4, "only {detected} of {} corruptions detected", bytes.len());
}

#[test]
fn huge_declared_footer_is_rejected_without_allocating() {
    let dir = tmp();
    let path = dir.path().join("t.arrow");
    write_tensor(&path, DType::U8, &[2, 2], &[1, 2, 3, 4]).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 10..n - 6].copy_from_slice(&i32::MAX.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let err = TensorFile::open(&path).unwrap_err().to_string();
    assert!(err.contains("footer length"), "{err}");
}

#[path = "../../../tests/support/skip.rs"]
mod skip;

#[path = "../../../tests/support/torch_venv.rs"]
mod torch_venv;

/// The venv python holding pyarrow, if `make setup` has installed it.
pub(crate) fn venv_python() -> Option<PathBuf> {
    let py = torch_venv::venv_python();
    py.exists().then_some(py)
}

#[test]
fn pyarrow_reads_it_as_a_fixed_shape_tensor() {
    let py = venv_python().filter(|py| {
        std::process::Command::new(py).args(["-c", "import pyarrow"]).output().is_ok_and(|o| o.status.success())
    });
    let Some(py) = py else {
        skip::missing("pyarrow_reads_it_as_a_fixed_shape_tensor", "no venv python with pyarrow (run `make setup`, or set CAIRN_TORCH_HOME)");
        return;
    };
    let dir = tmp();
    let path = dir.path().join("t.arrow");
    let values: Vec<f32> = (0..4 * 3 * 2).map(|i| i as f32 * 0.5).collect();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
    write_tensor(&path, DType::F32, &[4, 3, 2], &bytes).unwrap();
    let script = r#"
import sys, json, pyarrow as pa
t = pa.ipc.open_file(sys.argv[1]).read_all()
col = t.column("data").combine_chunks()
assert isinstance(col.type, pa.FixedShapeTensorType), col.type
arr = col.to_numpy_ndarray()
print(json.dumps({"shape": list(arr.shape), "ext": list(col.type.shape),
                  "dtype": str(arr.dtype), "sum": float(arr.sum()),
                  "cairn": json.loads(t.schema.metadata[b"cairn:shape"])}))
"#;
    let out = std::process::Command::new(py).arg("-c").arg(script).arg(&path).output().unwrap();
    assert!(out.status.success(), "pyarrow failed: {}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["shape"], serde_json::json!([4, 3, 2]));
    assert_eq!(got["ext"], serde_json::json!([3, 2]));
    assert_eq!(got["dtype"], "float32");
    assert_eq!(got["sum"], serde_json::json!(values.iter().sum::<f32>() as f64));
    assert_eq!(got["cairn"], serde_json::json!([4, 3, 2]));
}
