//! Renders the first images of a u8 `N×C×H×W` tensor artifact (C = 1 or 3)
//! as one PNG contact sheet, for `cairn inspect --grid`: the quickest way to
//! see that a data stage produced what it should (right classes, right
//! orientation, no channel swap). Small images are enlarged by an integer
//! factor with nearest-neighbour sampling so pixels stay honest.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use super::tensor::{DType, TensorError, TensorFile};

/// Largest grid side in pixels; beyond this, ask for fewer images.
const MAX_SIDE: usize = 16_384;
/// Gap between cells, in output pixels, filled with mid grey.
const PAD: usize = 2;
const PAD_VALUE: u8 = 128;

#[derive(Clone, Debug)]
pub struct GridOptions {
    /// How many images (the first ones) to show.
    pub count: usize,
    /// Images per row; default: a near-square grid.
    pub columns: Option<usize>,
    /// Enlargement factor; default: enough to make cells at least 96 px.
    pub scale: Option<usize>,
}

impl Default for GridOptions {
    fn default() -> Self {
        Self { count: 64, columns: None, scale: None }
    }
}

/// What was drawn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GridInfo {
    pub images: usize,
    pub width: usize,
    pub height: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum GridError {
    #[error(transparent)]
    Tensor(#[from] TensorError),
    #[error("{path}: cannot draw an image grid: {reason}")]
    Unsuitable { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: PNG encoding failed: {source}")]
    Png { path: PathBuf, source: png::EncodingError },
}

/// Draws the grid of `tensor`'s first images into the PNG file `out`.
pub fn render_grid(tensor: &Path, options: &GridOptions, out: &Path) -> Result<GridInfo, GridError> {
    let unsuitable = |reason: String| GridError::Unsuitable { path: tensor.to_path_buf(), reason };
    let file = TensorFile::open(tensor)?;
    let &[n, c, h, w] = file.shape() else {
        return Err(unsuitable(format!("shape {:?} is not N×C×H×W", file.shape())));
    };
    if file.dtype() != DType::U8 || !(c == 1 || c == 3) {
        return Err(unsuitable(format!("need u8 images with 1 or 3 channels, found {} with {c}", file.dtype())));
    }
    let count = options.count.min(n);
    if count == 0 {
        return Err(unsuitable("the tensor holds no images".into()));
    }
    let columns = options.columns.unwrap_or_else(|| (count as f64).sqrt().ceil() as usize).clamp(1, count);
    let rows = count.div_ceil(columns);
    let scale = options.scale.unwrap_or_else(|| 96usize.div_ceil(h.max(w))).max(1);
    let (cell_w, cell_h) = (w * scale, h * scale);
    let width = columns * (cell_w + PAD) + PAD;
    let height = rows * (cell_h + PAD) + PAD;
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(unsuitable(format!(
            "a {width}×{height} px grid is too large; ask for fewer images or a smaller scale"
        )));
    }

    let mut images = vec![0u8; count * file.row_bytes()];
    file.read_rows(0, &mut images)?;
    let mut canvas = vec![PAD_VALUE; width * height * 3];
    let plane = h * w;
    for (i, image) in images.chunks_exact(file.row_bytes()).enumerate() {
        let (x0, y0) = (PAD + (i % columns) * (cell_w + PAD), PAD + (i / columns) * (cell_h + PAD));
        for y in 0..cell_h {
            let row = &mut canvas[((y0 + y) * width + x0) * 3..][..cell_w * 3];
            let src_y = y / scale;
            for (x, px) in row.chunks_exact_mut(3).enumerate() {
                let at = src_y * w + x / scale;
                // Planar CHW to interleaved RGB; grey repeats its one plane.
                for (ch, v) in px.iter_mut().enumerate() {
                    *v = image[(ch % c) * plane + at];
                }
            }
        }
    }

    let io = |source| GridError::Io { path: out.to_path_buf(), source };
    let png_err = |source| GridError::Png { path: out.to_path_buf(), source };
    let mut encoder = png::Encoder::new(BufWriter::new(File::create(out).map_err(io)?), width as u32, height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(png_err)?;
    writer.write_image_data(&canvas).map_err(png_err)?;
    writer.finish().map_err(png_err)?;
    Ok(GridInfo { images: count, width, height })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::write_tensor;

    #[test]
    fn draws_images_in_place_and_enlarged() {
        let dir = tempfile::tempdir().unwrap();
        let tensor = dir.path().join("images.arrow");
        // Three 2×2 RGB images; image i has red = 10 i, green = 100, blue = pixel index.
        let mut bytes = Vec::new();
        for i in 0..3u8 {
            bytes.extend([10 * i; 4]);
            bytes.extend([100; 4]);
            bytes.extend([0, 1, 2, 3]);
        }
        write_tensor(&tensor, DType::U8, &[3, 3, 2, 2], &bytes).unwrap();
        let out = dir.path().join("grid.png");
        let options = GridOptions { count: 3, columns: Some(2), scale: Some(3) };
        let info = render_grid(&tensor, &options, &out).unwrap();
        assert_eq!(info, GridInfo { images: 3, width: 2 * 8 + 2, height: 2 * 8 + 2 });

        let decoder = png::Decoder::new(std::io::BufReader::new(File::open(&out).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut buf).unwrap();
        let px = |x: usize, y: usize| &buf[(y * info.width + x) * 3..][..3];
        assert_eq!(px(0, 0), [PAD_VALUE; 3]);
        // Image 1 sits in column 1; its pixel (1, 1) covers x 13..16, y 5..8.
        assert_eq!(px(2 + 8 + 2 + 3, 2 + 3), [10, 100, 3]);
        // Image 2 starts the second row.
        assert_eq!(px(2, 2 + 8 + 2), [20, 100, 0]);
    }

    #[test]
    fn refuses_tensors_that_are_not_images() {
        let dir = tempfile::tempdir().unwrap();
        let labels = dir.path().join("labels.arrow");
        write_tensor(&labels, DType::I64, &[2], &[0u8; 16]).unwrap();
        let err = render_grid(&labels, &GridOptions::default(), &dir.path().join("g.png")).unwrap_err();
        assert!(err.to_string().contains("not N×C×H×W"), "{err}");
    }
}
