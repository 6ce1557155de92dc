//! A data set as the subset drawer sees it: class names, the labelled items
//! of the official train and test splits, and a way to materialise any list
//! of items as a u8 `N×3×H×W` buffer.
//!
//! Items keep only a locator, so a catalog of 60,000 JPEGs costs a few MB;
//! pixels are produced (decoded, for image folders) only for the items a
//! split actually uses, in parallel, straight into their slot of the output.
//! Errors are collected per item and the first one in item order is
//! reported, so the message does not depend on thread scheduling.

use std::sync::Arc;

use rayon::prelude::*;

use super::decode;
use super::source::SourceTree;
use super::DataError;

#[derive(Clone, Debug)]
pub(crate) struct Item {
    pub label: usize,
    /// Where the item comes from: a path inside the source, or
    /// `<batch file>#<record>` for CIFAR binary records.
    pub source: String,
    /// Index of the file holding it, in the reader's own list.
    pub file: usize,
    /// Byte offset of a CIFAR record's pixels in its file.
    pub offset: usize,
}

pub(crate) enum Pixels {
    /// CIFAR batch files' bytes; pixels are already planar RGB, 32×32.
    Records(Vec<Arc<[u8]>>),
    /// Encoded images, decoded on demand; `dims` is the first training
    /// image's `(height, width)`, which every image must share.
    Encoded { tree: SourceTree, dims: (usize, usize) },
}

pub(crate) struct Catalog {
    pub classes: Vec<String>,
    pub train: Vec<Item>,
    pub test: Vec<Item>,
    pub pixels: Pixels,
    /// Scale every image to this square as it is materialised (see
    /// [`super::scale`]); `None` keeps the images' own (shared) size.
    pub square: Option<usize>,
}

impl Catalog {
    /// `[channels, height, width]` of every image.
    pub fn image_shape(&self) -> [usize; 3] {
        if let Some(s) = self.square {
            return [3, s, s];
        }
        match &self.pixels {
            Pixels::Records(_) => [3, super::cifar::SIDE, super::cifar::SIDE],
            Pixels::Encoded { dims: (h, w), .. } => [3, *h, *w],
        }
    }

    pub fn row_bytes(&self) -> usize {
        self.image_shape().iter().product()
    }

    /// The pixels of `items`, in order, as one `N×3×H×W` buffer.
    pub fn images(&self, items: &[&Item]) -> Result<Vec<u8>, DataError> {
        let row = self.row_bytes();
        let mut out = vec![0u8; items.len() * row];
        match &self.pixels {
            Pixels::Records(files) => {
                let side = super::cifar::SIDE;
                let record = 3 * side * side;
                for (slot, item) in out.chunks_exact_mut(row).zip(items) {
                    let pixels = &files[item.file][item.offset..item.offset + record];
                    match self.square {
                        Some(size) => {
                            let rgb: Vec<u8> = (0..side * side).flat_map(|i| (0..3).map(move |c| pixels[c * side * side + i])).collect();
                            super::scale::square(&rgb, 3, (side, side), size, slot)
                        }
                        None => slot.copy_from_slice(pixels),
                    }
                }
            }
            Pixels::Encoded { tree, dims } => {
                let results: Vec<Result<(), DataError>> = out
                    .par_chunks_exact_mut(row)
                    .zip(items.par_iter())
                    .map(|(slot, item)| {
                        let file = &tree.files[item.file];
                        let bytes = file.read(tree)?;
                        match self.square {
                            Some(size) => decode::decode_square_into(&file.display(tree), &bytes, size, slot),
                            None => decode::decode_into(&file.display(tree), &bytes, *dims, slot),
                        }
                    })
                    .collect();
                results.into_iter().collect::<Result<(), DataError>>()?;
            }
        }
        Ok(out)
    }
}
