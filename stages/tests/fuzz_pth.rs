//! Property-based fuzzing of the two weight readers:
//! `cairn_stages::pth::parse` (PyTorch zip checkpoints) and
//! `cairn_stages::weights::parse_safetensors`.
//!
//! Checkpoints are built here the way `torch.save` lays them out (a stored
//! zip, optionally zip64, holding `archive/data.pkl`, `archive/byteorder`
//! and one raw file per storage), from a pickle program written op by op.
//! Mutations work at three levels: the pickle program (ops deleted,
//! duplicated, swapped or inserted; integers such as sizes, strides and
//! offsets replaced with hostile values; strings such as storage keys and
//! globals replaced), the zip entries (storages cut short or dropped,
//! big-endian byte order), and the final bytes (flips, truncation, 2/4/8-byte
//! little-endian fields overwritten). safetensors inputs are saved files
//! mutated the same way plus headers built at random. Neither reader may
//! panic; an error says what is wrong; a file that loads yields tensors no
//! larger than the budget its bytes justify.
//!
//! `make test` runs a few hundred cases; `CAIRN_FUZZ_CASES=1000000` (as
//! `make fuzz` sets) runs a long campaign.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use cairn_stages::{pth, weights};
use proptest::prelude::*;
use tch::{Kind, Tensor};

#[path = "../../tests/support/fuzz_driver.rs"]
mod fuzz_driver;
use fuzz_driver::fuzz;

/// A memory fence: Rust-side allocations beyond [`FENCE`] live bytes are
/// refused, which aborts the process ("memory allocation of N bytes
/// failed") instead of letting a reader that builds values without bound
/// exhaust a shared machine. (libtorch's own allocations are not counted;
/// [`OUTPUT_BUDGET`] bounds the tensors it returns.)
struct Fence;

const FENCE: usize = 2 << 30;
static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Fence {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size() > FENCE {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            return std::ptr::null_mut();
        }
        let p = System.alloc(layout);
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Fence = Fence;

/// Largest total tensor size a loaded input may yield: the inputs here are
/// a few kilobytes, so anything near this is a size taken on trust.
const OUTPUT_BUDGET: usize = 64 << 20;

// ---- a pickle writer ----------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Proto(u8),
    Frame(u64),
    Global(String, String),
    StackGlobal,
    Str(String),
    ShortStr(String),
    Int(i64),
    Float(f64),
    Put(u32),
    Memoize,
    Get(u32),
    Mark,
    Tuple,
    /// TUPLE1..TUPLE3.
    TupleN(u8),
    EmptyTuple,
    EmptyList,
    EmptyDict,
    Append,
    Appends,
    SetItem,
    SetItems,
    Build,
    Reduce,
    BinPersId,
    NewObj,
    None,
    Bool(bool),
    Stop,
    Raw(Vec<u8>),
}

fn encode(ops: &[Op]) -> Vec<u8> {
    let mut b = Vec::new();
    for op in ops {
        match op {
            Op::Proto(v) => b.extend([0x80, *v]),
            Op::Frame(n) => {
                b.push(0x95);
                b.extend(n.to_le_bytes());
            }
            Op::Global(m, n) => {
                b.push(b'c');
                b.extend(m.as_bytes());
                b.push(b'\n');
                b.extend(n.as_bytes());
                b.push(b'\n');
            }
            Op::StackGlobal => b.push(0x93),
            Op::Str(s) => {
                b.push(b'X');
                b.extend((s.len() as u32).to_le_bytes());
                b.extend(s.as_bytes());
            }
            Op::ShortStr(s) => {
                let s = &s.as_bytes()[..s.len().min(255)];
                b.extend([0x8c, s.len() as u8]);
                b.extend(s);
            }
            Op::Int(v) => match *v {
                0..=0xff => b.extend([b'K', *v as u8]),
                0x100..=0xffff => {
                    b.push(b'M');
                    b.extend((*v as u16).to_le_bytes());
                }
                v if i32::try_from(v).is_ok() => {
                    b.push(b'J');
                    b.extend((v as i32).to_le_bytes());
                }
                v => {
                    b.extend([0x8a, 8]);
                    b.extend(v.to_le_bytes());
                }
            },
            Op::Float(f) => {
                b.push(b'G');
                b.extend(f.to_bits().to_be_bytes());
            }
            Op::Put(k) if *k < 256 => b.extend([b'q', *k as u8]),
            Op::Put(k) => {
                b.push(b'r');
                b.extend(k.to_le_bytes());
            }
            Op::Memoize => b.push(0x94),
            Op::Get(k) if *k < 256 => b.extend([b'h', *k as u8]),
            Op::Get(k) => {
                b.push(b'j');
                b.extend(k.to_le_bytes());
            }
            Op::Mark => b.push(b'('),
            Op::Tuple => b.push(b't'),
            Op::TupleN(n) => b.push(0x84 + n.clamp(&1, &3)),
            Op::EmptyTuple => b.push(b')'),
            Op::EmptyList => b.push(b']'),
            Op::EmptyDict => b.push(b'}'),
            Op::Append => b.push(b'a'),
            Op::Appends => b.push(b'e'),
            Op::SetItem => b.push(b's'),
            Op::SetItems => b.push(b'u'),
            Op::Build => b.push(b'b'),
            Op::Reduce => b.push(b'R'),
            Op::BinPersId => b.push(b'Q'),
            Op::NewObj => b.push(0x81),
            Op::None => b.push(b'N'),
            Op::Bool(t) => b.push(if *t { 0x88 } else { 0x89 }),
            Op::Stop => b.push(b'.'),
            Op::Raw(bytes) => b.extend(bytes),
        }
    }
    b
}

/// Most pickle ops a mutated checkpoint may have (repeats stack up).
const MAX_OPS: usize = 250_000;

/// One tensor of a seed checkpoint.
struct Spec {
    name: &'static str,
    storage: &'static str,
    storage_type: &'static str,
    offset: i64,
    size: &'static [i64],
    stride: &'static [i64],
}

const TENSORS: &[Spec] = &[
    Spec { name: "fc.weight", storage: "0", storage_type: "FloatStorage", offset: 0, size: &[2, 3], stride: &[3, 1] },
    Spec { name: "fc.bias", storage: "1", storage_type: "FloatStorage", offset: 0, size: &[2], stride: &[1] },
    Spec { name: "bn.num_batches_tracked", storage: "2", storage_type: "LongStorage", offset: 0, size: &[], stride: &[] },
    Spec { name: "fc.weight_tail", storage: "0", storage_type: "FloatStorage", offset: 3, size: &[3], stride: &[1] },
    Spec { name: "t.half", storage: "3", storage_type: "HalfStorage", offset: 0, size: &[2, 2], stride: &[1, 2] },
];

/// Storage key → (element count, bytes per element).
fn storages() -> BTreeMap<&'static str, (usize, usize)> {
    BTreeMap::from([("0", (6, 4)), ("1", (2, 4)), ("2", (1, 8)), ("3", (4, 2))])
}

/// Protocol-2 style ops (as `torch.save` writes them) for an
/// `OrderedDict` of [`TENSORS`], with `_metadata` set by BUILD. `p4` uses
/// protocol 4's SHORT_BINUNICODE, STACK_GLOBAL and MEMOIZE instead, and
/// wraps tensors in `_rebuild_parameter`.
fn state_dict_ops(p4: bool, memo_base: u32) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut memo = memo_base;
    let mut put = |ops: &mut Vec<Op>| {
        ops.push(if p4 { Op::Memoize } else { Op::Put(memo) });
        memo += 1;
        memo - 1
    };
    let global = |ops: &mut Vec<Op>, m: &str, n: &str| {
        if p4 {
            ops.push(Op::ShortStr(m.into()));
            ops.push(Op::ShortStr(n.into()));
            ops.push(Op::StackGlobal);
        } else {
            ops.push(Op::Global(m.into(), n.into()));
        }
    };
    let string = |ops: &mut Vec<Op>, s: &str| ops.push(if p4 { Op::ShortStr(s.into()) } else { Op::Str(s.into()) });
    global(&mut ops, "collections", "OrderedDict");
    let od = put(&mut ops);
    ops.extend([Op::EmptyTuple, Op::Reduce]);
    put(&mut ops);
    ops.push(Op::Mark);
    let mut rebuild = None;
    let mut storage_tag = None;
    for t in TENSORS {
        string(&mut ops, t.name);
        put(&mut ops);
        if p4 {
            global(&mut ops, "torch._utils", "_rebuild_parameter");
            put(&mut ops);
        }
        match rebuild {
            Some(k) => ops.push(Op::Get(k)),
            None => {
                global(&mut ops, "torch._utils", "_rebuild_tensor_v2");
                rebuild = Some(put(&mut ops));
            }
        }
        ops.push(Op::Mark);
        ops.push(Op::Mark);
        match storage_tag {
            Some(k) => ops.push(Op::Get(k)),
            None => {
                string(&mut ops, "storage");
                storage_tag = Some(put(&mut ops));
            }
        }
        global(&mut ops, "torch", t.storage_type);
        put(&mut ops);
        string(&mut ops, t.storage);
        put(&mut ops);
        string(&mut ops, "cpu");
        put(&mut ops);
        ops.push(Op::Int(storages()[t.storage].0 as i64));
        ops.push(Op::Tuple);
        put(&mut ops);
        ops.push(Op::BinPersId);
        ops.push(Op::Int(t.offset));
        for dims in [t.size, t.stride] {
            match dims.len() {
                0 => ops.push(Op::EmptyTuple),
                n @ 1..=3 => {
                    ops.extend(dims.iter().map(|&d| Op::Int(d)));
                    ops.push(Op::TupleN(n as u8));
                }
                _ => {
                    ops.push(Op::Mark);
                    ops.extend(dims.iter().map(|&d| Op::Int(d)));
                    ops.push(Op::Tuple);
                }
            }
            put(&mut ops);
        }
        ops.push(Op::Bool(false));
        ops.push(Op::Get(od));
        ops.extend([Op::EmptyTuple, Op::Reduce]);
        put(&mut ops);
        ops.push(Op::Tuple);
        put(&mut ops);
        ops.push(Op::Reduce);
        put(&mut ops);
        if p4 {
            ops.extend([Op::Bool(true), Op::Get(od), Op::EmptyTuple, Op::Reduce, Op::TupleN(3), Op::Reduce]);
            put(&mut ops);
        }
    }
    ops.push(Op::SetItems);
    // state = {"_metadata": OrderedDict([("", {"version": 1})])}
    ops.push(Op::EmptyDict);
    put(&mut ops);
    string(&mut ops, "_metadata");
    put(&mut ops);
    ops.extend([Op::Get(od), Op::EmptyTuple, Op::Reduce]);
    put(&mut ops);
    string(&mut ops, "");
    ops.push(Op::EmptyDict);
    string(&mut ops, "version");
    ops.extend([Op::Int(1), Op::SetItem, Op::SetItem, Op::SetItem, Op::Build]);
    ops
}

/// The pickle of a seed: a bare state dict, or one wrapped in
/// `{"epoch": 3, "state_dict": …}`.
fn seed_ops(p4: bool, wrapped: bool) -> Vec<Op> {
    let mut ops = vec![Op::Proto(if p4 { 4 } else { 2 })];
    if p4 {
        ops.push(Op::Frame(0));
    }
    if wrapped {
        ops.extend([Op::EmptyDict, Op::Put(1000), Op::Mark, Op::Str("epoch".into()), Op::Int(3), Op::Str("state_dict".into())]);
        // MEMOIZE numbers from the memo's size, which the PUT above grew.
        ops.extend(state_dict_ops(p4, if p4 { 1 } else { 0 }));
        ops.push(Op::SetItems);
    } else {
        ops.extend(state_dict_ops(p4, 0));
    }
    ops.push(Op::Stop);
    ops
}

fn storage_bytes(key: &str) -> Vec<u8> {
    let (n, el) = storages()[key];
    match el {
        4 => (0..n).flat_map(|i| (i as f32 * 0.5 - 1.0).to_le_bytes()).collect(),
        8 => (0..n).flat_map(|i| (i as i64 + 7).to_le_bytes()).collect(),
        _ => (0..n).flat_map(|i| (0x3c00u16 + i as u16).to_le_bytes()).collect(),
    }
}

// ---- a zip writer (stored entries, 64-byte aligned data, as torch.save) --

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(bytes);
    c.sum()
}

fn zip(entries: &[(String, Vec<u8>)], zip64: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let offset = out.len() as u64;
        // Pad the local extra field so the data starts 64-byte aligned.
        let base = offset as usize + 30 + name.len() + 4;
        let pad = (64 - base % 64) % 64;
        let mut local_extra = vec![0x46, 0x42];
        local_extra.extend((pad as u16).to_le_bytes());
        local_extra.extend(std::iter::repeat_n(b'Z', pad));
        let crc = crc32(data);
        out.extend(0x0403_4b50u32.to_le_bytes());
        out.extend([45, 0, 0, 0, 0, 0, 0, 0, 0, 0x21]); // version, flags, method 0, time, date
        out.extend(crc.to_le_bytes());
        out.extend((data.len() as u32).to_le_bytes());
        out.extend((data.len() as u32).to_le_bytes());
        out.extend((name.len() as u16).to_le_bytes());
        out.extend((local_extra.len() as u16).to_le_bytes());
        out.extend(name.as_bytes());
        out.extend(&local_extra);
        out.extend(data);

        let (size32, off32, extra) = if zip64 {
            let mut x = vec![1, 0, 24, 0];
            x.extend((data.len() as u64).to_le_bytes());
            x.extend((data.len() as u64).to_le_bytes());
            x.extend(offset.to_le_bytes());
            (0xffff_ffffu32, 0xffff_ffffu32, x)
        } else {
            (data.len() as u32, offset as u32, Vec::new())
        };
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend([45, 3, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0x21]);
        central.extend(crc.to_le_bytes());
        central.extend(size32.to_le_bytes());
        central.extend(size32.to_le_bytes());
        central.extend((name.len() as u16).to_le_bytes());
        central.extend((extra.len() as u16).to_le_bytes());
        central.extend([0u8; 10]); // comment length, disk, attributes
        central.extend(off32.to_le_bytes());
        central.extend(name.as_bytes());
        central.extend(&extra);
    }
    let cd_offset = out.len() as u64;
    let cd_len = central.len() as u64;
    out.extend(central);
    let count = entries.len() as u64;
    if zip64 {
        let rec = out.len() as u64;
        out.extend(0x0606_4b50u32.to_le_bytes());
        out.extend(44u64.to_le_bytes());
        out.extend([45, 3, 45, 0]);
        out.extend([0u8; 8]); // disk numbers
        out.extend(count.to_le_bytes());
        out.extend(count.to_le_bytes());
        out.extend(cd_len.to_le_bytes());
        out.extend(cd_offset.to_le_bytes());
        out.extend(0x0706_4b50u32.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(rec.to_le_bytes());
        out.extend(1u32.to_le_bytes());
        out.extend(0x0605_4b50u32.to_le_bytes());
        out.extend([0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        out.extend(0xffff_ffffu32.to_le_bytes());
        out.extend(0xffff_ffffu32.to_le_bytes());
    } else {
        out.extend(0x0605_4b50u32.to_le_bytes());
        out.extend([0, 0, 0, 0]);
        out.extend((count as u16).to_le_bytes());
        out.extend((count as u16).to_le_bytes());
        out.extend((cd_len as u32).to_le_bytes());
        out.extend((cd_offset as u32).to_le_bytes());
    }
    out.extend([0, 0]);
    out
}

fn entries(pickle: Vec<u8>) -> Vec<(String, Vec<u8>)> {
    let mut e = vec![("archive/data.pkl".to_string(), pickle), ("archive/byteorder".to_string(), b"little".to_vec())];
    for key in storages().keys() {
        e.push((format!("archive/data/{key}"), storage_bytes(key)));
    }
    e.push(("archive/version".to_string(), b"3\n".to_vec()));
    e
}

/// (p4, wrapped, zip64) of each seed.
const SEEDS: [(bool, bool, bool); 5] =
    [(false, false, false), (false, true, false), (true, false, false), (true, true, false), (false, false, true)];

// ---- mutations ----------------------------------------------------------

const HOSTILE_INTS: &[i64] = &[
    0, 1, -1, 2, 3, 5, 6, 7, 255, 256, 65535, 65536, 0x7fff_ffff, -0x8000_0000, 0xffff_ffff, 1 << 32, 1 << 40,
    1 << 62, i64::MAX, i64::MIN, i64::MAX / 2,
];

const STRINGS: &[&str] = &[
    "0", "1", "2", "3", "4", "99", "", "../0", "storage", "cpu", "cuda:0", "FloatStorage", "QInt8Storage",
    "UntypedStorage", "torch", "os", "system", "collections", "OrderedDict", "torch._utils", "_rebuild_tensor_v2",
    "_rebuild_parameter", "_rebuild_qtensor", "builtins", "eval", "state_dict", "model", "fc.weight", "é🦀",
];

#[derive(Clone, Debug)]
enum OpEdit {
    Delete(usize),
    Duplicate(usize),
    Swap(usize),
    Insert(usize, Op),
    /// Replaces the `nth` integer operand.
    Int(usize, i64),
    /// Replaces the `nth` string operand (or a global's module/name).
    Str(usize, &'static str),
    Truncate(usize),
    /// Repeats the `len` ops at `at` `times` times (deep nesting, long
    /// runs of one opcode).
    Repeat { at: usize, len: usize, times: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Mark),
        Just(Op::Tuple),
        (1..=3u8).prop_map(Op::TupleN),
        Just(Op::EmptyTuple),
        Just(Op::EmptyList),
        Just(Op::EmptyDict),
        Just(Op::Append),
        Just(Op::Appends),
        Just(Op::SetItem),
        Just(Op::SetItems),
        Just(Op::Build),
        Just(Op::Reduce),
        Just(Op::BinPersId),
        Just(Op::NewObj),
        Just(Op::None),
        Just(Op::Stop),
        Just(Op::Memoize),
        Just(Op::StackGlobal),
        any::<bool>().prop_map(Op::Bool),
        any::<f64>().prop_map(Op::Float),
        prop::sample::select(HOSTILE_INTS).prop_map(Op::Int),
        (0..64u32).prop_map(Op::Get),
        (0..64u32).prop_map(Op::Put),
        prop::sample::select(STRINGS).prop_map(|s| Op::Str(s.into())),
        (prop::sample::select(STRINGS), prop::sample::select(STRINGS)).prop_map(|(m, n)| Op::Global(m.into(), n.into())),
        prop::collection::vec(any::<u8>(), 1..6).prop_map(Op::Raw),
    ]
}

fn op_edit() -> impl Strategy<Value = OpEdit> {
    let i = any::<usize>();
    prop_oneof![
        2 => i.prop_map(OpEdit::Delete),
        1 => i.prop_map(OpEdit::Duplicate),
        1 => i.prop_map(OpEdit::Swap),
        2 => (i, op()).prop_map(|(i, op)| OpEdit::Insert(i, op)),
        5 => (i, prop_oneof![3 => prop::sample::select(HOSTILE_INTS), 1 => any::<i64>()]).prop_map(|(i, v)| OpEdit::Int(i, v)),
        3 => (i, prop::sample::select(STRINGS)).prop_map(|(i, s)| OpEdit::Str(i, s)),
        1 => i.prop_map(OpEdit::Truncate),
        1 => (i, 1..5usize, prop_oneof![3 => 2..16usize, 1 => 1000..200_000usize])
            .prop_map(|(at, len, times)| OpEdit::Repeat { at, len, times }),
    ]
}

fn apply_op_edit(ops: &mut Vec<Op>, e: &OpEdit) {
    let n = ops.len();
    if n == 0 {
        if let OpEdit::Insert(_, op) = e {
            ops.push(op.clone());
        }
        return;
    }
    match e {
        OpEdit::Delete(i) => drop(ops.remove(i % n)),
        OpEdit::Duplicate(i) => ops.insert(i % n, ops[i % n].clone()),
        OpEdit::Swap(i) if n > 1 => ops.swap(i % (n - 1), i % (n - 1) + 1),
        OpEdit::Insert(i, op) => ops.insert(i % (n + 1), op.clone()),
        OpEdit::Int(i, v) => {
            let ints: Vec<usize> = (0..n).filter(|&j| matches!(ops[j], Op::Int(_))).collect();
            if !ints.is_empty() {
                ops[ints[i % ints.len()]] = Op::Int(*v);
            }
        }
        OpEdit::Str(i, s) => {
            let strs: Vec<usize> =
                (0..n).filter(|&j| matches!(ops[j], Op::Str(_) | Op::ShortStr(_) | Op::Global(..))).collect();
            if !strs.is_empty() {
                let j = strs[i % strs.len()];
                ops[j] = match &ops[j] {
                    Op::Str(_) => Op::Str(s.to_string()),
                    Op::ShortStr(_) => Op::ShortStr(s.to_string()),
                    Op::Global(m, _) if i % 2 == 0 => Op::Global(m.clone(), s.to_string()),
                    Op::Global(_, name) => Op::Global(s.to_string(), name.clone()),
                    other => other.clone(),
                };
            }
        }
        OpEdit::Truncate(i) => ops.truncate(i % (n + 1)),
        OpEdit::Repeat { at, len, times } => {
            let at = at % n;
            let window: Vec<Op> = ops[at..(at + len).min(n)].to_vec();
            let copies: Vec<Op> = window.iter().cycle().take(window.len() * times).cloned().collect();
            ops.splice(at..at, copies);
        }
        OpEdit::Swap(_) => {}
    }
}

#[derive(Clone, Debug)]
enum EntryEdit {
    /// Cuts a storage (or any entry) to `len % (size + 1)` bytes.
    Cut { entry: usize, len: usize },
    Extend { entry: usize, by: usize },
    Drop { entry: usize },
    BigEndian,
    Rename { entry: usize, to: &'static str },
}

const ENTRY_NAMES: &[&str] =
    &["archive/data.pkl", "archive/data/0", "archive/data/9", "other/data.pkl", "data.pkl", "archive/byteorder", "/data.pkl"];

fn entry_edit() -> impl Strategy<Value = EntryEdit> {
    let e = any::<usize>();
    prop_oneof![
        6 => (e, any::<usize>()).prop_map(|(entry, len)| EntryEdit::Cut { entry, len }),
        1 => (e, 1..64usize).prop_map(|(entry, by)| EntryEdit::Extend { entry, by }),
        1 => e.prop_map(|entry| EntryEdit::Drop { entry }),
        1 => Just(EntryEdit::BigEndian),
        1 => (e, prop::sample::select(ENTRY_NAMES)).prop_map(|(entry, to)| EntryEdit::Rename { entry, to }),
    ]
}

fn apply_entry_edit(entries: &mut Vec<(String, Vec<u8>)>, e: &EntryEdit) {
    let n = entries.len();
    if n == 0 {
        return;
    }
    match e {
        EntryEdit::Cut { entry, len } => {
            let d = &mut entries[entry % n].1;
            let l = d.len();
            d.truncate(len % (l + 1));
        }
        EntryEdit::Extend { entry, by } => entries[entry % n].1.extend(std::iter::repeat_n(0xab, *by)),
        EntryEdit::Drop { entry } => drop(entries.remove(entry % n)),
        EntryEdit::BigEndian => {
            if let Some(e) = entries.iter_mut().find(|e| e.0.ends_with("byteorder")) {
                e.1 = b"big".to_vec();
            }
        }
        EntryEdit::Rename { entry, to } => entries[entry % n].0 = to.to_string(),
    }
}

const FIELD_VALUES: &[u64] = &[
    0, 1, 2, 20, 22, 46, 0xff, 0xffff, 0xfffe, 0x7fff_ffff, 0xffff_ffff, 0xffff_fffe, 0x1_0000_0000, u64::MAX,
    u64::MAX - 45, 1 << 63,
];

#[derive(Clone, Debug)]
enum ByteEdit {
    Flip { at: usize, mask: u8 },
    Field { at: usize, width: usize, value: u64 },
    Truncate { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Delete { at: usize, len: usize },
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    let at = any::<usize>();
    prop_oneof![
        3 => (at, 1..=255u8).prop_map(|(at, mask)| ByteEdit::Flip { at, mask }),
        4 => (at, prop::sample::select(&[2usize, 4, 8][..]), prop_oneof![3 => prop::sample::select(FIELD_VALUES), 1 => any::<u64>()])
            .prop_map(|(at, width, value)| ByteEdit::Field { at, width, value }),
        1 => at.prop_map(|at| ByteEdit::Truncate { at }),
        1 => (at, prop::collection::vec(any::<u8>(), 1..8)).prop_map(|(at, bytes)| ByteEdit::Insert { at, bytes }),
        1 => (at, 1..32usize).prop_map(|(at, len)| ByteEdit::Delete { at, len }),
    ]
}

fn apply_byte_edit(b: &mut Vec<u8>, e: &ByteEdit) {
    let len = b.len();
    match e {
        ByteEdit::Flip { at, mask } if len > 0 => b[at % len] ^= mask,
        ByteEdit::Field { at, width, value } if len >= *width => {
            let at = at % (len - width + 1);
            b[at..at + width].copy_from_slice(&value.to_le_bytes()[..*width]);
        }
        ByteEdit::Truncate { at } => b.truncate(at % (len + 1)),
        ByteEdit::Insert { at, bytes } => {
            let at = at % (len + 1);
            b.splice(at..at, bytes.iter().copied());
        }
        ByteEdit::Delete { at, len: n } if len > 0 => {
            let at = at % len;
            b.drain(at..(at + n).min(len));
        }
        _ => {}
    }
}

fn checkpoint() -> impl Strategy<Value = Vec<u8>> {
    (
        0..SEEDS.len(),
        prop::collection::vec(op_edit(), 0..6),
        prop::collection::vec(entry_edit(), 0..2),
        prop_oneof![2 => Just(Vec::new()), 1 => prop::collection::vec(byte_edit(), 1..4)],
    )
        .prop_map(|(seed, op_edits, entry_edits, byte_edits)| {
            let (p4, wrapped, zip64) = SEEDS[seed];
            let mut ops = seed_ops(p4, wrapped);
            for e in &op_edits {
                apply_op_edit(&mut ops, e);
                // Keep pickles under a few MB: the reader holds a value per
                // op, so millions of ops legitimately take gigabytes.
                ops.truncate(MAX_OPS);
            }
            let mut es = entries(encode(&ops));
            for e in &entry_edits {
                apply_entry_edit(&mut es, e);
            }
            let mut bytes = zip(&es, zip64);
            for e in &byte_edits {
                apply_byte_edit(&mut bytes, e);
            }
            bytes
        })
}

/// Every tensor a loaded input yields is materialised and bounded.
fn check_tensors<'a>(tensors: impl Iterator<Item = &'a Tensor>) -> Result<(), TestCaseError> {
    let mut total = 0usize;
    for t in tensors {
        let bytes = t.numel() * t.kind().elt_size_in_bytes();
        total += bytes;
        prop_assert!(total <= OUTPUT_BUDGET, "a few-KB input yielded {total} bytes of tensors (last {:?} {:?})", t.size(), t.kind());
        prop_assert!(t.is_contiguous() || t.numel() == 0);
    }
    Ok(())
}

/// A refusal must say something.
fn refused(e: impl std::fmt::Display) -> Result<bool, TestCaseError> {
    prop_assert!(!e.to_string().trim().is_empty(), "an empty error");
    Ok(false)
}

fn check_pth(bytes: &[u8]) -> Result<bool, TestCaseError> {
    match pth::parse(bytes) {
        Ok(tensors) => {
            prop_assert!(!tensors.is_empty());
            check_tensors(tensors.values())?;
            Ok(true)
        }
        Err(e) => refused(e),
    }
}

#[test]
fn fuzz_pth_seeds_read() {
    for (p4, wrapped, zip64) in SEEDS {
        let bytes = zip(&entries(encode(&seed_ops(p4, wrapped))), zip64);
        let t = pth::parse(&bytes).unwrap_or_else(|e| panic!("seed {:?}: {e}", (p4, wrapped, zip64)));
        assert_eq!(t.len(), TENSORS.len(), "{:?}", t.keys());
        let w = &t["fc.weight"];
        assert_eq!((w.size(), w.kind()), (vec![2, 3], Kind::Float));
        assert_eq!(f32::try_from(w.get(1).get(2)).unwrap(), 1.5);
        assert_eq!(Vec::<f32>::try_from(&t["fc.weight_tail"]).unwrap(), [0.5, 1.0, 1.5]);
        assert_eq!(i64::try_from(&t["bn.num_batches_tracked"]).unwrap(), 7);
        // Stride (1, 2): the transpose of f16 storage [1, 1+1/1024, 1+2/1024, 1+3/1024].
        let half = Vec::<f32>::try_from(t["t.half"].to_kind(Kind::Float).flatten(0, -1)).unwrap();
        let u = 1.0 / 1024.0;
        assert_eq!(half, [1.0, 1.0 + 2.0 * u, 1.0 + u, 1.0 + 3.0 * u]);
        assert!(check_pth(&bytes).unwrap());
    }
}

#[test]
fn fuzz_pth_mutated_checkpoints() {
    // One core per fuzz target: libtorch's pool would take the other.
    tch::set_num_threads(1);
    fuzz("fuzz_pth_mutated_checkpoints", 2000, checkpoint(), |bytes| check_pth(&bytes));
}

// ---- safetensors --------------------------------------------------------

fn safetensors_seed() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let mut m = BTreeMap::new();
    m.insert("b.weight".to_string(), Tensor::from_slice(&[1.5f32, -2.0, 3.25, 4.0]).view([2, 2]));
    m.insert("a.running_mean".to_string(), Tensor::from_slice(&[7i64, 8]));
    m.insert("c.flag".to_string(), Tensor::from_slice(&[true, false, true]));
    m.insert("d.scalar".to_string(), Tensor::from_slice(&[0.25f64]).view([] as [i64; 0]));
    let meta = BTreeMap::from([("cairn.model".to_string(), "{\"arch\":\"fast\"}".to_string())]);
    weights::save(&path, &m, &meta).unwrap();
    std::fs::read(&path).unwrap()
}

const DTYPES: &[&str] = &["F32", "F64", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "U64", "F8_E4M3", ""];

/// A header built at random: entries with any dtype, shape and offsets.
fn random_safetensors() -> impl Strategy<Value = Vec<u8>> {
    let dim = prop_oneof![0..4u64, Just(u64::MAX), Just(1 << 32), Just(1 << 62), any::<u64>()];
    let entry = (
        "[a-z.]{0,6}",
        prop::sample::select(DTYPES),
        prop::collection::vec(dim, 0..4),
        prop_oneof![
            (0..80u64, 0..80u64).prop_map(|(a, b)| vec![a, b]),
            prop::collection::vec(prop_oneof![0..80u64, Just(u64::MAX), any::<u64>()], 0..4),
        ],
    );
    (prop::collection::vec(entry, 0..4), any::<bool>(), 0..80usize, prop::bool::weighted(0.15)).prop_map(|(entries, meta, data, lie)| {
        let mut header = serde_json::Map::new();
        if meta {
            header.insert("__metadata__".into(), serde_json::json!({"k": "v", "n": 1}));
        }
        for (name, dtype, shape, offs) in entries {
            header.insert(name, serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": offs}));
        }
        let head = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
        let declared = if lie { head.len() as u64 + data as u64 } else { head.len() as u64 };
        let mut out = declared.to_le_bytes().to_vec();
        out.extend(head);
        out.extend((0..data).map(|i| i as u8));
        out
    })
}

fn mutated_safetensors() -> impl Strategy<Value = Vec<u8>> {
    (prop::collection::vec(byte_edit(), 1..5), prop::collection::vec((any::<usize>(), prop::sample::select(&["0", "18446744073709551615", "-1", "1e30", "null", "[]", "\"F32\"", "9999999999"][..])), 0..3))
        .prop_map(|(edits, tokens)| {
            let mut bytes = safetensors_seed_cached().to_vec();
            // Token edits: replace a number in the JSON header.
            for (at, token) in tokens {
                let head_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
                let digits: Vec<usize> = (8..8 + head_len).filter(|&i| bytes[i].is_ascii_digit() && !bytes[i - 1].is_ascii_digit()).collect();
                if let Some(&start) = digits.get(at % digits.len().max(1)) {
                    let end = (start..8 + head_len).find(|&i| !bytes[i].is_ascii_digit()).unwrap_or(8 + head_len);
                    bytes.splice(start..end, token.bytes());
                    let new_len = (head_len + token.len() - (end - start)) as u64;
                    bytes[..8].copy_from_slice(&new_len.to_le_bytes());
                }
            }
            for e in &edits {
                apply_byte_edit(&mut bytes, e);
            }
            bytes
        })
}

fn safetensors_seed_cached() -> &'static [u8] {
    static SEED: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    SEED.get_or_init(safetensors_seed)
}

fn check_safetensors(bytes: &[u8]) -> Result<bool, TestCaseError> {
    match weights::parse_safetensors(bytes) {
        Ok(w) => {
            for t in w.tensors.values() {
                let n = t.numel() * t.kind().elt_size_in_bytes();
                prop_assert!(n <= bytes.len(), "a {}-byte file yielded a {n}-byte tensor", bytes.len());
            }
            check_tensors(w.tensors.values())?;
            Ok(true)
        }
        Err(e) => refused(e),
    }
}

#[test]
fn fuzz_safetensors_seed_reads() {
    let w = weights::parse_safetensors(safetensors_seed_cached()).unwrap();
    assert_eq!(w.tensors.len(), 4);
    assert_eq!(w.metadata["cairn.model"], "{\"arch\":\"fast\"}");
}

#[test]
fn fuzz_safetensors_files() {
    tch::set_num_threads(1);
    fuzz(
        "fuzz_safetensors_files",
        1000,
        prop_oneof![mutated_safetensors(), random_safetensors()],
        |bytes| check_safetensors(&bytes),
    );
}
