//! The data kinds: `load_subset` reads CIFAR-10 (the official binary
//! release, or an image folder as a directory or tar archive) and writes a
//! stratified, seeded subset as tensor artifacts; `resize` resamples image
//! tensors.
//!
//! Reading is split by concern: [`source`] turns a directory or archive into
//! a list of files (archives are read in memory, never extracted), [`cifar`]
//! and [`folder`] turn that list into a [`catalog::Catalog`] of labelled items,
//! [`decode`] decodes JPEG/PNG, [`subset`] draws the subset and
//! [`load_subset`] writes the outputs.

mod catalog;
mod cifar;
mod decode;
mod folder;
mod load_subset;
mod resize;
mod scale;
mod source;
mod subset;

use std::path::PathBuf;

pub use load_subset::load_subset;
pub use resize::{resample, resize};

pub(crate) use catalog::Item;

use crate::ctx::StageError;

/// A data problem, always naming the file (on disk or inside the archive)
/// and saying what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{file}: {problem}")]
    Invalid { file: String, problem: String },
    #[error(transparent)]
    Tensor(#[from] cairn_formats::TensorError),
    #[error(transparent)]
    Table(#[from] cairn_formats::TableError),
}

impl DataError {
    pub(crate) fn invalid(file: impl Into<String>, problem: impl Into<String>) -> Self {
        DataError::Invalid { file: file.into(), problem: problem.into() }
    }
}

impl From<DataError> for StageError {
    fn from(e: DataError) -> Self {
        StageError::new(e.to_string())
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)] mod fuzz_tests;
