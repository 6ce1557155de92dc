//! Reads the official CIFAR-10 binary release (`cifar-10-binary.tar.gz`, or
//! the folder it unpacks to): `data_batch_1.bin` … `data_batch_5.bin` and
//! `test_batch.bin`, each a run of 3,073-byte records (one label byte, then
//! 1,024 red, 1,024 green and 1,024 blue bytes of a 32×32 image), plus
//! `batches.meta.txt` with the class names.
//!
//! Every record's label is checked here, and a file whose length is not a
//! whole number of records is refused before any record is used, with the
//! record where it breaks.

use std::sync::Arc;

use super::catalog::{Catalog, Item, Pixels};
use super::source::SourceTree;
use super::DataError;

pub(crate) const SIDE: usize = 32;
const PIXELS: usize = 3 * SIDE * SIDE;
const RECORD: usize = 1 + PIXELS;
const TRAIN_FILES: [&str; 5] = ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
const TEST_FILE: &str = "test_batch.bin";
const META_FILE: &str = "batches.meta.txt";
/// CIFAR-10's classes in label order, used when `batches.meta.txt` is absent.
const CLASSES: [&str; 10] = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// Whether the tree looks like the binary release (for `format = "auto"`).
pub(crate) fn detect(tree: &SourceTree) -> bool {
    find(tree, TRAIN_FILES[0]).is_some()
}

fn base(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

fn find(tree: &SourceTree, file: &str) -> Option<usize> {
    tree.files.iter().position(|f| base(&f.name) == file)
}

pub(crate) fn read(tree: SourceTree) -> Result<Catalog, DataError> {
    let origin = tree.origin.display().to_string();
    let missing: Vec<&str> =
        TRAIN_FILES.iter().chain([&TEST_FILE]).copied().filter(|f| find(&tree, f).is_none()).collect();
    if !missing.is_empty() {
        return Err(DataError::invalid(
            origin,
            format!(
                "not the CIFAR-10 binary release: {} missing (expected data_batch_1..5.bin and test_batch.bin, \
                 as in cifar-10-binary.tar.gz)",
                missing.join(", ")
            ),
        ));
    }
    let classes = match find(&tree, META_FILE) {
        Some(i) => {
            let file = &tree.files[i];
            let text = file.read(&tree)?;
            let names: Vec<String> = String::from_utf8_lossy(&text)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            if names.len() != CLASSES.len() {
                return Err(DataError::invalid(
                    file.display(&tree),
                    format!("lists {} class names, CIFAR-10 has {}", names.len(), CLASSES.len()),
                ));
            }
            names
        }
        None => CLASSES.iter().map(|s| s.to_string()).collect(),
    };

    let mut files: Vec<Arc<[u8]>> = Vec::new();
    let mut read_split = |names: &[&str]| -> Result<Vec<Item>, DataError> {
        let mut items = Vec::new();
        for name in names {
            let file = &tree.files[find(&tree, name).expect("checked above")];
            let shown = file.display(&tree);
            let bytes: Arc<[u8]> = file.read(&tree)?.into();
            items.extend(records(&shown, base(&file.name), &bytes, files.len(), classes.len())?);
            files.push(bytes);
        }
        Ok(items)
    };
    let train = read_split(&TRAIN_FILES)?;
    let test = read_split(&[TEST_FILE])?;
    Ok(Catalog { classes, train, test, pixels: Pixels::Records(files), square: None })
}

/// Validates one batch file and lists its records.
fn records(shown: &str, base: &str, bytes: &[u8], file: usize, classes: usize) -> Result<Vec<Item>, DataError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        return Err(DataError::invalid(
            shown,
            format!(
                "{} bytes is not a whole number of {RECORD}-byte CIFAR-10 records (1 label byte + {PIXELS} pixel bytes): \
                 record {} is cut short. The file is truncated or not CIFAR-10 binary (CIFAR-100 records are 3074 bytes); \
                 download cifar-10-binary.tar.gz again",
                bytes.len(),
                bytes.len() / RECORD
            ),
        ));
    }
    bytes
        .chunks_exact(RECORD)
        .enumerate()
        .map(|(i, rec)| {
            let label = rec[0] as usize;
            if label >= classes {
                return Err(DataError::invalid(
                    shown,
                    format!("record {i} has label {label}, but CIFAR-10 labels are 0..={}; the file is corrupt", classes - 1),
                ));
            }
            Ok(Item { label, source: format!("{base}#{i}"), file, offset: i * RECORD + 1 })
        })
        .collect()
}
