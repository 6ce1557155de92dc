//! Property-based fuzzing of the Arrow tensor reader
//! (`cairn::formats::tensor::TensorFile`): valid files written by
//! `write_tensor` are mutated (bytes flipped, inserted, deleted, copied;
//! files truncated and extended; 4- and 8-byte little-endian fields such as
//! lengths, offsets and counts overwritten with huge, negative and
//! off-by-one values) and opened. Opening and reading never panic; an error
//! says what is wrong; a file that opens holds no more data than its bytes
//! and reads back within bounds; and no single allocation is much larger
//! than the (small) file, so a lying header cannot make the reader allocate
//! what it declares.
//!
//! `make test` runs a few hundred cases; `CAIRN_FUZZ_CASES=1000000` (as
//! `make fuzz` sets) runs a long campaign.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use cairn::formats::tensor::{write_tensor, DType, TensorFile};
use proptest::prelude::*;

/// Records the largest single allocation this thread asked for since the
/// last reset, to catch readers that trust a declared size.
struct Tracking;

thread_local! {
    static LARGEST: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}
static TRACKING: AtomicUsize = AtomicUsize::new(0);

fn note(size: usize) {
    if TRACKING.load(Ordering::Relaxed) != 0 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

#[path = "support/fuzz_driver.rs"]
mod fuzz_driver;
use fuzz_driver::fuzz;

/// Valid tensor files to mutate: every dtype, 1-D, N×1, empty, and a
/// multi-axis tensor.
fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let specs: &[(DType, &[usize])] = &[
            (DType::U8, &[4, 3, 2, 2]),
            (DType::I64, &[5]),
            (DType::I64, &[5, 1]),
            (DType::F32, &[0, 3]),
            (DType::F16, &[3, 2]),
            (DType::I32, &[2, 2]),
            (DType::F64, &[1, 1, 1]),
        ];
        specs
            .iter()
            .map(|(dtype, shape)| {
                let n: usize = shape.iter().product::<usize>() * dtype.size();
                let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
                let path = dir.path().join("seed.arrow");
                write_tensor(&path, *dtype, shape, &bytes).unwrap();
                std::fs::read(&path).unwrap()
            })
            .collect()
    })
}

/// Values worth writing over a length, offset or count field.
const INTERESTING: &[i64] = &[
    0,
    1,
    -1,
    2,
    7,
    8,
    16,
    255,
    256,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    1 << 40,
    i64::MAX,
    i64::MIN,
    i64::MAX - 7,
];

#[derive(Clone, Debug)]
enum Edit {
    Flip { at: usize, mask: u8 },
    Set { at: usize, byte: u8 },
    Insert { at: usize, bytes: Vec<u8> },
    Delete { at: usize, len: usize },
    /// Copies `len` bytes from `from` over `at` (moves a field elsewhere).
    Copy { from: usize, at: usize, len: usize },
    Truncate { at: usize },
    Extend { bytes: Vec<u8> },
    /// Overwrites a little-endian field of `width` bytes at `at`.
    Field { at: usize, width: usize, value: i64 },
    /// Adds `delta` to the little-endian u32 at `at` (off-by-some lengths).
    Nudge { at: usize, delta: i32 },
}

fn edit() -> impl Strategy<Value = Edit> {
    let at = any::<usize>();
    prop_oneof![
        4 => (at, 1..=255u8).prop_map(|(at, mask)| Edit::Flip { at, mask }),
        2 => (at, any::<u8>()).prop_map(|(at, byte)| Edit::Set { at, byte }),
        1 => (at, prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
        1 => (at, 1..64usize).prop_map(|(at, len)| Edit::Delete { at, len }),
        2 => (at, at, 1..32usize).prop_map(|(from, at, len)| Edit::Copy { from, at, len }),
        1 => at.prop_map(|at| Edit::Truncate { at }),
        1 => prop::collection::vec(any::<u8>(), 1..64).prop_map(|bytes| Edit::Extend { bytes }),
        6 => (at, prop::sample::select(&[4usize, 8][..]), prop_oneof![prop::sample::select(INTERESTING), any::<i64>()])
            .prop_map(|(at, width, value)| Edit::Field { at, width, value }),
        3 => (at, -16..=16i32).prop_map(|(at, delta)| Edit::Nudge { at, delta }),
    ]
}

fn apply(b: &mut Vec<u8>, e: &Edit) {
    let len = b.len();
    let pos = |at: usize| if len == 0 { 0 } else { at % len };
    match e {
        Edit::Flip { at, mask } if len > 0 => b[pos(*at)] ^= mask,
        Edit::Set { at, byte } if len > 0 => b[pos(*at)] = *byte,
        Edit::Insert { at, bytes } => {
            let at = if len == 0 { 0 } else { at % (len + 1) };
            b.splice(at..at, bytes.iter().copied());
        }
        Edit::Delete { at, len: n } if len > 0 => {
            let at = pos(*at);
            b.drain(at..(at + n).min(len));
        }
        Edit::Copy { from, at, len: n } if len > 0 => {
            let (from, at) = (pos(*from), pos(*at));
            let n = (*n).min(len - from).min(len - at);
            let piece = b[from..from + n].to_vec();
            b[at..at + n].copy_from_slice(&piece);
        }
        Edit::Truncate { at } => b.truncate(if len == 0 { 0 } else { at % (len + 1) }),
        Edit::Extend { bytes } => b.extend_from_slice(bytes),
        Edit::Field { at, width, value } if len >= *width => {
            // Fields in IPC metadata are 4- or 8-byte aligned; favour those.
            let at = pos(*at) / width * width;
            let at = at.min(len - width);
            b[at..at + width].copy_from_slice(&value.to_le_bytes()[..*width]);
        }
        Edit::Nudge { at, delta } if len >= 4 => {
            let at = (pos(*at) / 4 * 4).min(len - 4);
            let v = u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
            b[at..at + 4].copy_from_slice(&v.wrapping_add(*delta as u32).to_le_bytes());
        }
        _ => {}
    }
}

fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (0..seeds().len(), prop::collection::vec(edit(), 1..4)).prop_map(|(seed, edits)| {
        let mut bytes = seeds()[seed].clone();
        for e in &edits {
            apply(&mut bytes, e);
        }
        bytes
    })
}

/// Largest allocation allowed while opening and reading an input of `len`
/// bytes: the reader copies at most the file's data once, plus bookkeeping.
fn allocation_budget(len: usize) -> usize {
    4 * len + (256 << 10)
}

/// Opens `path` (holding `bytes`) and reads everything it claims to hold.
fn check(path: &Path, bytes: &[u8]) -> Result<bool, TestCaseError> {
    std::fs::write(path, bytes).unwrap();
    LARGEST.with(|l| l.set(0));
    TRACKING.fetch_add(1, Ordering::SeqCst);
    let outcome = read_back(path, bytes.len());
    TRACKING.fetch_sub(1, Ordering::SeqCst);
    let largest = LARGEST.with(|l| l.get());
    let accepted = outcome?;
    prop_assert!(
        largest <= allocation_budget(bytes.len()),
        "allocated {largest} bytes at once for a {}-byte file",
        bytes.len()
    );
    Ok(accepted)
}

fn read_back(path: &Path, file_len: usize) -> Result<bool, TestCaseError> {
    let t = match TensorFile::open(path) {
        Ok(t) => t,
        Err(e) => {
            let shown = e.to_string();
            prop_assert!(!shown.trim().is_empty());
            prop_assert!(shown.contains(&path.display().to_string()), "the error names no file: {shown}");
            return Ok(false);
        }
    };
    let row = t.row_bytes();
    prop_assert!(row > 0, "zero-byte rows");
    prop_assert_eq!(row, t.shape()[1..].iter().product::<usize>() * t.dtype().size());
    prop_assert!(t.byte_len() <= file_len, "{:?} claims {} bytes in a {}-byte file", t, t.byte_len(), file_len);
    let chunks: Vec<&[u8]> = t.chunks().collect();
    prop_assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), t.byte_len());
    prop_assert!(chunks.iter().all(|c| !c.is_empty() && c.len() % row == 0));
    let all = t.to_vec();
    prop_assert_eq!(all.len(), t.byte_len());
    let mut out = vec![0u8; t.byte_len()];
    t.read_rows(0, &mut out).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&out, &all);
    // Every single row, and reads that run past the end.
    for r in 0..t.rows() {
        let mut one = vec![0u8; row];
        t.read_rows(r, &mut one).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&one[..], &all[r * row..(r + 1) * row]);
    }
    let mut two = vec![0u8; 2 * row];
    prop_assert!(t.read_rows(t.rows().saturating_sub(1), &mut two).is_err());
    prop_assert!(t.read_rows(usize::MAX, &mut two).is_err());
    Ok(true)
}

fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.arrow");
    (dir, path)
}

#[test]
fn fuzz_tensor_seeds_read_back() {
    let (_dir, path) = scratch();
    for seed in seeds() {
        std::fs::write(&path, seed).unwrap();
        TensorFile::open(&path).unwrap();
        assert!(check(&path, seed).unwrap(), "a seed was refused");
    }
}

#[test]
fn fuzz_tensor_mutated_files() {
    let (_dir, path) = scratch();
    fuzz("fuzz_tensor_mutated_files", 1000, mutated(), |bytes| check(&path, &bytes));
}
