//! Property-based fuzzing of the CIFAR-10 binary reader (through
//! [`read_catalog`], as `load_subset` calls it, then materialising every
//! image): small valid batch sets are mutated — files truncated, extended,
//! emptied, removed, renamed or duplicated; label bytes set out of range;
//! bytes flipped; `batches.meta.txt` rewritten — and served as a directory,
//! a `.tar` or a `.tar.gz`, whose archive bytes are mutated in turn (flipped
//! bytes, truncation, trailing garbage, lying tar sizes, corrupt gzip).
//! Reading returns a catalog whose every image reads back, or an error that
//! names the source; it never panics.
//!
//! A unit test rather than an integration test: the public route
//! (`load_subset`) also draws a subset and writes tensors and Parquet for
//! each case, which would spend the time budget on writing, not reading.
//!
//! `make test` runs a few hundred cases; `CAIRN_FUZZ_CASES=1000000` (as
//! `make fuzz` sets) runs a long campaign.

use std::io::Write;
use std::path::Path;

use cairn_kinds::data::SourceFormat;
use proptest::prelude::*;

use super::catalog::Item;
use super::tests::read_catalog;

#[path = "../../../tests/support/fuzz_driver.rs"]
mod fuzz_driver;
use fuzz_driver::fuzz;

const RECORD: usize = 3073;
const BATCHES: [&str; 6] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin"];
const META: &str = "batches.meta.txt";
const CLASSES: &str = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n";

/// The valid release, shrunk: `per_file` records per batch, labels 0..10.
fn release(per_file: usize, meta: bool) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = BATCHES
        .iter()
        .enumerate()
        .map(|(f, name)| {
            let bytes = (0..per_file)
                .flat_map(|r| {
                    let mut rec = vec![((f + r) % 10) as u8];
                    rec.extend((0..RECORD - 1).map(|p| (p * 7 + r + f) as u8));
                    rec
                })
                .collect();
            (format!("cifar-10-batches-bin/{name}"), bytes)
        })
        .collect();
    if meta {
        files.push((format!("cifar-10-batches-bin/{META}"), CLASSES.as_bytes().to_vec()));
    }
    files
}

/// Names a file may be renamed to.
const NAMES: &[&str] = &[
    "data_batch_1.bin",
    "data_batch_6.bin",
    "test_batch.bin",
    "DATA_BATCH_1.BIN",
    "data_batch_1.bin.txt",
    ".data_batch_1.bin",
    "batches.meta.txt",
    "nested/deeper/data_batch_2.bin",
    "data_batch_1",
    "readme.md",
];

/// Contents `batches.meta.txt` may be rewritten to.
const METAS: &[&[u8]] = &[
    b"",
    b"\n\n\n",
    b"a\nb\nc\nd\ne\nf\ng\nh\ni\n",
    b"a\nb\nc\nd\ne\nf\ng\nh\ni\nj\nk\n",
    b"a\r\nb\r\nc\r\nd\r\ne\r\nf\r\ng\r\nh\r\ni\r\nj\r\n",
    b"  a \n\n b\nc\nd\ne\nf\ng\nh\ni\nj\n\n\n",
    b"\xff\xfe\x00a\nb\nc\nd\ne\nf\ng\nh\ni\nj",
    b"\xc3\nb\nc\nd\ne\nf\ng\nh\ni\nj",
];

/// One edit to one file of the release (`file` is taken modulo the count).
#[derive(Clone, Debug)]
enum FileEdit {
    Truncate { file: usize, at: usize },
    Extend { file: usize, bytes: usize, fill: u8 },
    Label { file: usize, record: usize, label: u8 },
    Flip { file: usize, at: usize, mask: u8 },
    Remove { file: usize },
    Empty { file: usize },
    Rename { file: usize, name: usize },
    Duplicate { file: usize, name: usize },
    Meta { text: usize },
}

fn file_edit() -> impl Strategy<Value = FileEdit> {
    let f = any::<usize>();
    prop_oneof![
        3 => (f, any::<usize>()).prop_map(|(file, at)| FileEdit::Truncate { file, at }),
        2 => (f, prop_oneof![1..8usize, Just(1), Just(RECORD - 1), Just(RECORD), Just(RECORD + 1), 1..2 * RECORD], any::<u8>())
            .prop_map(|(file, bytes, fill)| FileEdit::Extend { file, bytes, fill }),
        4 => (f, any::<usize>(), prop_oneof![9..=11u8, Just(255), any::<u8>()])
            .prop_map(|(file, record, label)| FileEdit::Label { file, record, label }),
        2 => (f, any::<usize>(), 1..=255u8).prop_map(|(file, at, mask)| FileEdit::Flip { file, at, mask }),
        1 => f.prop_map(|file| FileEdit::Remove { file }),
        1 => f.prop_map(|file| FileEdit::Empty { file }),
        1 => (f, 0..NAMES.len()).prop_map(|(file, name)| FileEdit::Rename { file, name }),
        1 => (f, 0..NAMES.len()).prop_map(|(file, name)| FileEdit::Duplicate { file, name }),
        1 => (0..METAS.len()).prop_map(|text| FileEdit::Meta { text }),
    ]
}

fn apply_file_edit(files: &mut Vec<(String, Vec<u8>)>, e: &FileEdit) {
    let n = files.len();
    if n == 0 {
        return;
    }
    let renamed = |old: &str, name: usize| match old.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{}", NAMES[name]),
        None => NAMES[name].to_string(),
    };
    match *e {
        FileEdit::Truncate { file, at } => {
            let b = &mut files[file % n].1;
            let len = b.len();
            b.truncate(at % (len + 1));
        }
        FileEdit::Extend { file, bytes, fill } => files[file % n].1.extend(std::iter::repeat_n(fill, bytes)),
        FileEdit::Label { file, record, label } => {
            let b = &mut files[file % n].1;
            let records = b.len() / RECORD;
            if records > 0 {
                b[(record % records) * RECORD] = label;
            }
        }
        FileEdit::Flip { file, at, mask } => {
            let b = &mut files[file % n].1;
            if !b.is_empty() {
                let len = b.len();
                b[at % len] ^= mask;
            }
        }
        FileEdit::Remove { file } => drop(files.remove(file % n)),
        FileEdit::Empty { file } => files[file % n].1.clear(),
        FileEdit::Rename { file, name } => {
            let f = &mut files[file % n];
            f.0 = renamed(&f.0, name);
        }
        FileEdit::Duplicate { file, name } => {
            let (old, bytes) = files[file % n].clone();
            files.push((renamed(&old, name), bytes));
        }
        FileEdit::Meta { text } => match files.iter_mut().find(|(name, _)| name.ends_with(META)) {
            Some(f) => f.1 = METAS[text].to_vec(),
            None => files.push((format!("cifar-10-batches-bin/{META}"), METAS[text].to_vec())),
        },
    }
}

#[derive(Clone, Copy, Debug)]
enum Container {
    Dir,
    Tar,
    TarGz,
}

/// One edit to the archive's bytes (after the files were packed).
#[derive(Clone, Debug)]
enum ArchiveEdit {
    Flip { at: usize, mask: u8 },
    Truncate { at: usize },
    Append { bytes: Vec<u8> },
    /// Rewrites the size field of the tar header at block `header` (a
    /// 512-byte block index), with a valid checksum, so the lie is believed.
    TarSize { header: usize, size: u64 },
    /// Appends a second gzip member holding `bytes` (valid gzip framing).
    GzipMember { bytes: Vec<u8> },
}

fn archive_edit() -> impl Strategy<Value = ArchiveEdit> {
    prop_oneof![
        3 => (any::<usize>(), 1..=255u8).prop_map(|(at, mask)| ArchiveEdit::Flip { at, mask }),
        2 => any::<usize>().prop_map(|at| ArchiveEdit::Truncate { at }),
        1 => prop::collection::vec(any::<u8>(), 1..600).prop_map(|bytes| ArchiveEdit::Append { bytes }),
        3 => (any::<usize>(), prop_oneof![Just(0u64), 1..10_000u64, Just(0o77777777777), Just(u64::MAX), any::<u64>()])
            .prop_map(|(header, size)| ArchiveEdit::TarSize { header, size }),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(|bytes| ArchiveEdit::GzipMember { bytes }),
    ]
}

#[derive(Clone, Debug)]
struct Case {
    files: Vec<(String, Vec<u8>)>,
    container: Container,
    archive_edits: Vec<ArchiveEdit>,
    format: SourceFormat,
}

fn case() -> impl Strategy<Value = Case> {
    (
        1..=2usize,
        any::<bool>(),
        prop::collection::vec(file_edit(), 0..5),
        prop_oneof![Just(Container::Dir), Just(Container::Tar), Just(Container::TarGz)],
        prop::collection::vec(archive_edit(), 0..3),
        prop_oneof![
            4 => Just(SourceFormat::Auto),
            4 => Just(SourceFormat::Cifar10Binary),
            1 => Just(SourceFormat::ImageFolder),
        ],
    )
        .prop_map(|(per_file, meta, edits, container, archive_edits, format)| {
            let mut files = release(per_file, meta);
            for e in &edits {
                apply_file_edit(&mut files, e);
            }
            Case { files, container, archive_edits, format }
        })
}

/// An uncompressed tar of `files` (name, bytes), as the CIFAR tests write.
pub(super) fn tar_bytes(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut raw = tar::Builder::new(Vec::new());
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        raw.append_data(&mut header, name, bytes.as_slice()).unwrap();
    }
    raw.into_inner().unwrap()
}

pub(super) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Applies an archive edit to the tar bytes (before compression) or to the
/// compressed bytes, whichever it is about.
fn apply_archive_edit(tar: &mut [u8], packed: &mut Vec<u8>, e: &ArchiveEdit) {
    match e {
        ArchiveEdit::TarSize { header, size } => {
            // Header blocks are those whose `ustar` magic is at 257.
            let headers: Vec<usize> =
                (0..tar.len() / 512).filter(|&b| tar.get(b * 512 + 257..b * 512 + 262) == Some(b"ustar")).collect();
            if let Some(&block) = headers.get(header % headers.len().max(1)) {
                let h = &mut tar[block * 512..block * 512 + 512];
                let field = format!("{size:011o}");
                if field.len() <= 11 {
                    h[124..135].copy_from_slice(field.as_bytes());
                    h[135] = 0;
                } else {
                    // GNU base-256 for sizes beyond 11 octal digits.
                    h[124] = 0x80;
                    h[125..128].fill(0);
                    h[128..136].copy_from_slice(&size.to_be_bytes());
                }
                h[148..156].fill(b' ');
                let sum: u32 = h.iter().map(|&b| b as u32).sum();
                h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            }
        }
        ArchiveEdit::Flip { at, mask } if !packed.is_empty() => {
            let len = packed.len();
            packed[at % len] ^= mask;
        }
        ArchiveEdit::Truncate { at } => {
            let len = packed.len();
            packed.truncate(at % (len + 1));
        }
        ArchiveEdit::Append { bytes } => packed.extend_from_slice(bytes),
        ArchiveEdit::GzipMember { bytes } => packed.extend(gzip(bytes)),
        ArchiveEdit::Flip { .. } => {}
    }
}

/// Lays the case out under `dir` and returns the source path to read.
fn materialise(dir: &Path, case: &Case) -> std::path::PathBuf {
    match case.container {
        Container::Dir => {
            let root = dir.join("src");
            std::fs::create_dir_all(&root).unwrap();
            for (name, bytes) in &case.files {
                let path = root.join(name);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, bytes).unwrap();
            }
            root
        }
        Container::Tar | Container::TarGz => {
            // Size lies are written into the tar itself, the rest after packing.
            let mut tar = tar_bytes(&case.files);
            let mut scratch = Vec::new();
            for e in case.archive_edits.iter().filter(|e| matches!(e, ArchiveEdit::TarSize { .. })) {
                apply_archive_edit(&mut tar, &mut scratch, e);
            }
            let mut packed = if matches!(case.container, Container::TarGz) { gzip(&tar) } else { tar };
            let mut unused = Vec::new();
            for e in case.archive_edits.iter().filter(|e| !matches!(e, ArchiveEdit::TarSize { .. })) {
                apply_archive_edit(&mut unused, &mut packed, e);
            }
            let path = dir.join("cifar-10-binary.tar.gz");
            std::fs::write(&path, packed).unwrap();
            path
        }
    }
}

/// The property: the reader returns a catalog whose every image reads back
/// (with labels in range), or an error that names the source.
fn check(case: &Case) -> Result<bool, TestCaseError> {
    let tmp = tempfile::tempdir().unwrap();
    let source = materialise(tmp.path(), case);
    match read_catalog(&source, case.format) {
        Ok(cat) => {
            prop_assert!(!cat.classes.is_empty());
            let items: Vec<&Item> = cat.train.iter().chain(&cat.test).collect();
            prop_assert!(items.iter().all(|it| it.label < cat.classes.len()), "a label is out of range");
            let pixels = cat.images(&items).map_err(|e| TestCaseError::fail(format!("images: {e}")))?;
            prop_assert_eq!(pixels.len(), items.len() * cat.row_bytes());
            Ok(true)
        }
        Err(e) => {
            let shown = e.to_string();
            let root = tmp.path().display().to_string();
            prop_assert!(shown.contains(&root), "the error does not name the source: {shown}");
            prop_assert!(shown.len() > root.len() + 10, "the error says nothing: {shown}");
            Ok(false)
        }
    }
}

#[test]
fn fuzz_cifar_seed_reads() {
    for container in [Container::Dir, Container::Tar, Container::TarGz] {
        let case = Case { files: release(2, true), container, archive_edits: vec![], format: SourceFormat::Auto };
        let tmp = tempfile::tempdir().unwrap();
        let cat = read_catalog(&materialise(tmp.path(), &case), case.format).unwrap();
        assert_eq!((cat.train.len(), cat.test.len(), cat.classes.len()), (10, 2, 10));
    }
}

#[test]
fn fuzz_cifar_mutated_releases() {
    fuzz("fuzz_cifar_mutated_releases", 300, case(), |c| check(&c));
}
